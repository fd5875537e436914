#!/usr/bin/env bash
# The offline demo: build the sample mirror, serve it on loopback, run the whole DAG with `airflow dags test` on the
# embedded defaults (SQLite, a local-folder store), then say where the report and the data/ tree are.
# Honours MGDATA_STORAGE and MGDATA_LAYOUT_DIR when set.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
demo="$root/demo"
py="$root/.venv/bin/python"
mkdir -p "$demo"
export AIRFLOW_HOME="${AIRFLOW_HOME:-$demo/airflow}"
export MGDATA_STORAGE="${MGDATA_STORAGE:-file://$demo/store}"
export MGDATA_LAYOUT_DIR="${MGDATA_LAYOUT_DIR:-$demo/data}"
export MGDATA_CATALOG="$demo/mirror/catalog.yaml"
export MGDATA_RETRY_DELAY_SECONDS="${MGDATA_RETRY_DELAY_SECONDS:-2}"

start=$(date +%s)
"$py" -m mgdata.mirror build "$demo/mirror" --images "${MGDATA_DEMO_IMAGES:-200}"
rm -f "$demo/mirror.ready"
"$py" -m mgdata.mirror serve "$demo/mirror" --port 0 --catalog-out "$MGDATA_CATALOG" --ready-file "$demo/mirror.ready" \
  >"$demo/mirror.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do [ -s "$demo/mirror.ready" ] && break; sleep 0.1; done
[ -s "$demo/mirror.ready" ] || { echo "the sample mirror did not start; see $demo/mirror.log"; exit 1; }
echo "sample mirror at $(cat "$demo/mirror.ready")"
# The Hub stand-in answers on the same server; the generated catalog already names it as each Hub mirror's endpoint,
# and HF_ENDPOINT covers Hub mirrors it does not name.
export HF_ENDPOINT="$(cat "$demo/mirror.ready")"
export MGDATA_GDRIVE_URL="$(cat "$demo/mirror.ready")/drive.google.com"  # the Drive stand-in on the same server

status=0
"$root/scripts/airflow-env.sh" airflow dags test mgllava_data >"$demo/dags-test.log" 2>&1 || status=$?
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
ready = report["ready_to_train"]
print(f"\n{ready.get('note', 'ready to train: not checked')}")
if not ready.get("ready") and report["sources"].get("docvqa", {}).get("status") == "skipped":
    # DocVQA registers its users; the sample mirror holds the archive a registered user downloads.
    archive = "$demo/mirror/datasets.cvc.uab.es/rrc/DocVQA/train.tar.gz"
    inbox = "inbox/docvqa/train.tar.gz"
    if store.url.startswith("file://"):
        put = f"mkdir -p {store.local_path('inbox/docvqa')} && cp {archive} {store.local_path(inbox)}"
    else:
        put = f"copy {archive} to {store.describe(inbox)}"
    print(f"to make it ready, provide DocVQA (here: the mirror's stand-in archive) and run the demo again:\n"
          f"  {put} && scripts/demo.sh")
PY
exit $status
