"""What a new operator gets by default: no run starts unless asked, and one Airflow home for the UI and the demo.

The schedule is read at parse time from `MGDATA_SCHEDULE`: unset means manual runs only, so unpausing the DAG (the
local `make ui` creates it unpaused; the deployment docs unpause it) never starts a 250 GB run by itself.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def parse_dag(monkeypatch, tmp_path, schedule: str | None):
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow_home"))
    if schedule is None:
        monkeypatch.delenv("MGDATA_SCHEDULE", raising=False)
    else:
        monkeypatch.setenv("MGDATA_SCHEDULE", schedule)
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    return bag.dags["mgllava_data"]


@pytest.mark.parametrize("value", [None, "", "  "])
def test_without_a_schedule_setting_runs_start_only_when_triggered(monkeypatch, tmp_path, value):
    dag = parse_dag(monkeypatch, tmp_path, value)
    assert dag.timetable.can_be_scheduled is False, dag.timetable
    assert dag.max_active_runs == 1 and dag.catchup is False


def test_the_schedule_setting_enables_the_refresh(monkeypatch, tmp_path):
    dag = parse_dag(monkeypatch, tmp_path, "@weekly")
    assert dag.timetable.can_be_scheduled is True
    assert dag.schedule == "@weekly"
    assert dag.catchup is False, "enabling the refresh must not back-fill missed weeks"


def airflow_env_settings(**env: str) -> dict[str, str]:
    """What scripts/airflow-env.sh runs Airflow with (called without a command it only prints them)."""
    clean = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **env}
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "airflow-env.sh")],
        env=clean,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def test_make_ui_starts_nothing_by_itself():
    settings = airflow_env_settings()
    assert "MGDATA_SCHEDULE" not in settings, "a schedule would start a full run as soon as the UI is up"
    assert settings["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    # Unpaused on purpose (a triggered run starts at once): that is safe only because of the manual-only schedule.
    assert settings["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "False"


def test_the_demo_and_the_ui_share_one_airflow_home():
    """Every run the audit page lists must open in the UI: the demo writes its runs into the UI's home."""
    assert airflow_env_settings()["AIRFLOW_HOME"] == str(ROOT / ".airflow")
    assert airflow_env_settings(AIRFLOW_HOME="/srv/af")["AIRFLOW_HOME"] == "/srv/af"
    demo = (ROOT / "scripts" / "demo.sh").read_text()
    assert not re.search(r"AIRFLOW_HOME=", demo), "demo.sh must not pick a home of its own"
    assert re.search(r'scripts/airflow-env\.sh" airflow dags test mgllava_data', demo)
    makefile = (ROOT / "Makefile").read_text()
    for target in ("real", "ui", "ui-demo"):
        recipe = re.search(rf"^{re.escape(target)}:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
        assert recipe and "scripts/airflow-env.sh airflow" in recipe.group(1), target
    assert "demo/airflow" not in makefile + demo
