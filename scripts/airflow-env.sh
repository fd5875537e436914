#!/usr/bin/env bash
# Run an Airflow command with this project's embedded defaults: AIRFLOW_HOME=.airflow (SQLite; the one home of
# `make ui`, `make demo` and `make real`, so every run the UI or the audit page lists opens), the repo's dags/ and
# plugins/, no examples, pools imported. Any MGDATA_* or AIRFLOW__* variable already set wins.
# Without a command it prints the settings it would run with, and changes nothing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export PATH="$root/.venv/bin:$PATH"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$root/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="${AIRFLOW__CORE__DAGS_FOLDER:-$root/dags}"
export AIRFLOW__CORE__PLUGINS_FOLDER="${AIRFLOW__CORE__PLUGINS_FOLDER:-$root/plugins}"
export AIRFLOW__CORE__LOAD_EXAMPLES="${AIRFLOW__CORE__LOAD_EXAMPLES:-False}"
# Unpaused, so a run triggered from the UI starts at once. Nothing starts by itself: the DAG has no schedule unless
# MGDATA_SCHEDULE is set (see docs/operating.md, "Refreshes and the schedule").
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="${AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION:-False}"
if [ $# -eq 0 ]; then
  env | grep -E '^(AIRFLOW_HOME|AIRFLOW__|MGDATA_)' | sort
  exit 0
fi
mkdir -p "$AIRFLOW_HOME"
if [ ! -f "$AIRFLOW_HOME/.migrated" ]; then
  airflow db migrate >"$AIRFLOW_HOME/migrate.log" 2>&1 || { cat "$AIRFLOW_HOME/migrate.log"; exit 1; }
  touch "$AIRFLOW_HOME/.migrated"
fi
airflow pools import "$root/include/pools.json" >/dev/null
exec "$@"
