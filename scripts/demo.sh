#!/usr/bin/env bash
# The offline demo: build the sample mirror, serve it on loopback, run the whole DAG with `airflow dags test` on the
# embedded defaults (SQLite, a local-folder store), then say where the report and the data/ tree are.
# RECIPE names the corpora to serve (comma-separated recipes of include/recipes/, e.g. RECIPE=llava-v1.5): their
# sources are ingested and each one's tree is laid out under demo/recipes/<name>/ with its own verdict; unset, the
# demo is MG-LLaVA's corpus. Honours MGDATA_STORAGE and MGDATA_LAYOUT_DIR when set. Airflow's home is the one `make ui` uses (scripts/airflow-env.sh),
# so the demo's runs open in the UI: `make ui-demo` shows them with the demo's store on the audit page.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
demo="$root/demo"
py="$root/.venv/bin/python"
mkdir -p "$demo"
export MGDATA_STORAGE="${MGDATA_STORAGE:-file://$demo/store}"
export MGDATA_LAYOUT_DIR="${MGDATA_LAYOUT_DIR:-$demo/data}"
export MGDATA_CATALOG="$demo/mirror/catalog.yaml"
export MGDATA_RETRY_DELAY_SECONDS="${MGDATA_RETRY_DELAY_SECONDS:-2}"

start=$(date +%s)
"$py" -m offline_mirror build "$demo/mirror" --images "${MGDATA_DEMO_IMAGES:-200}"
# The mirror's address is part of what it serves (OCR-VQA's dataset.json lists cover URLs on it), so the demo asks for
# the port of its last run (MGDATA_DEMO_PORT overrides); only when that port is taken does it take any free one.
server=
trap '[ -z "$server" ] || kill $server 2>/dev/null || true' EXIT
start_mirror() {
  rm -f "$demo/mirror.ready"
  "$py" -m offline_mirror serve "$demo/mirror" --port "$1" --catalog-out "$MGDATA_CATALOG" \
    --ready-file "$demo/mirror.ready" >"$demo/mirror.log" 2>&1 &
  server=$!
  for _ in $(seq 100); do
    [ -s "$demo/mirror.ready" ] && return 0
    kill -0 "$server" 2>/dev/null || return 1
    sleep 0.1
  done
  kill "$server" 2>/dev/null || true
  return 1
}
port="${MGDATA_DEMO_PORT:-$(cat "$demo/mirror.port" 2>/dev/null || echo 0)}"
start_mirror "$port" || { [ "$port" != 0 ] && start_mirror 0; } \
  || { echo "the sample mirror did not start; see $demo/mirror.log"; exit 1; }
base="$(cat "$demo/mirror.ready")"
echo "${base##*:}" >"$demo/mirror.port"
echo "sample mirror at $base"
# The Hub stand-in answers on the same server; the generated catalog already names it as each Hub mirror's endpoint,
# and HF_ENDPOINT covers Hub mirrors it does not name.
export HF_ENDPOINT="$(cat "$demo/mirror.ready")"
export MGDATA_GDRIVE_URL="$(cat "$demo/mirror.ready")/drive.google.com"  # the Drive stand-in on the same server

export MGDATA_RECIPES="${RECIPE:-${MGDATA_RECIPES:-}}"
conf="$("$py" -c 'import json, sys; print(json.dumps({"recipes": [r.strip() for r in sys.argv[1].split(",") if r.strip()]}))' "$MGDATA_RECIPES")"
status=0
"$root/scripts/airflow-env.sh" airflow dags test mgllava_data -c "$conf" >"$demo/dags-test.log" 2>&1 || status=$?
echo "demo wall time: $(( $(date +%s) - start )) s"
# The summary ends with the verdict and, when not ready, the one step that makes it ready.
"$py" - <<PY
import json, os
from mgdata.settings import Settings
store = Settings.from_env().open_store()
runs = sorted(o.key for o in store.list("runs/") if o.key.endswith("/report.json"))
if not runs:
    raise SystemExit("no report was written; see $demo/dags-test.log")
report = json.loads(store.read_bytes(runs[-1]))
print(f"\nrun {report['run_id']}: {report['status']}")
for name, s in report["sources"].items():
    print(f"  {name:22} {s['status']:8} fetched {s['bytes_fetched']/1e6:8.1f} MB  ok {s['images_ok']:5}  "
          f"normalized {s['images_normalized']:3}  invalid {s['images_invalid']:3}  missing {s.get('images_missing') or 0:3}  "
          f"{s.get('error') or ''}")
print(f"\nreport: {store.describe(runs[-1])}\n        {store.describe(runs[-1].replace('.json', '.html'))}")
print(f"data/:  {os.environ.get('MGDATA_LAYOUT_DIR') or 'not materialised'}")
print(f"log:    $demo/dags-test.log")
print("UI:     make ui-demo (Airflow and the audit page on this store; same Airflow home as make ui)")
asked = [r.strip() for r in os.environ.get("MGDATA_RECIPES", "").split(",") if r.strip()]
for name in (r for r in asked if r != "mgllava"):  # MG-LLaVA's verdict is the run's, below
    verdict, tree = report.get("recipes", {}).get(name, {}), report.get("recipe_trees", {}).get(name)
    where = f" tree: {tree['root']} ({tree['files']:,} images)" if tree and tree.get("root") else ""
    print(f"recipe {name}:{where}\n  {verdict.get('note', 'not checked')}")
ready = report["ready_to_train"]
if not asked or "mgllava" in asked:
    print(f"\nMG-LLaVA: {ready.get('note', 'ready to train: not checked')}")
if (not asked or "mgllava" in asked) and not ready.get("ready") and report["sources"].get("docvqa", {}).get("status") == "skipped":
    # DocVQA registers its users; the sample mirror holds the archive a registered user downloads.
    archive = "$demo/mirror/datasets.cvc.uab.es/rrc/DocVQA/train.tar.gz"
    inbox = "inbox/docvqa/train.tar.gz"
    if store.url.startswith("file://"):
        put = f"mkdir -p {store.local_path('inbox/docvqa')} && cp {archive} {store.local_path(inbox)}"
    else:
        put = f"copy {archive} to {store.describe(inbox)}"
    print(f"to make it ready, provide DocVQA (here: the mirror's stand-in archive) and run the demo again:\n"
          f"  {put} && {'RECIPE=' + ','.join(asked) + ' ' if asked else ''}scripts/demo.sh")
PY
exit $status
