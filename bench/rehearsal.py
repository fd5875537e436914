"""The full-scale rehearsal: the whole corpus's shape through the real scheduler, then two refreshes, on one stack
or both.

    .venv/bin/python -m bench.rehearsal [--scale 0.01|0.1|full] [--stack local|celery-s3|both] [--instances F]
        [--work DIR] [--timeout S] [--seed N] [--no-faults]
    make rehearsal SCALE=0.1 STACK=both

1. builds the rehearsal mirror (`python -m offline_mirror build DIR --scale S`: every source at its real file count x S,
   real archive shapes, tiny images, shards cut to the real run's number of extract instances) and serves it on
   loopback (`python -m offline_mirror serve`: plain HTTP, the Hub, Drive and cover-host stand-ins);
2. puts DocVQA's archive in the store's inbox, as a registered user does;
3. runs Airflow as deployed, not `airflow dags test`, on a throwaway PostgreSQL database
   (`tests/deployment/processes.py`'s `Deployment`):
   - `local`: `api-server`, `scheduler` and `dag-processor` with the LocalExecutor (parallelism = cores), a
     local-folder store and `MGDATA_LAYOUT_DIR`;
   - `celery-s3`: the same three and two Celery workers with the deployment's settings, the store on S3
     (`moto_server` in its own process behind the counting proxy `tests/deployment/s3_counter.py`, reached through
     the `mgdata_s3` Airflow connection), the layout materialised from S3 into `MGDATA_LAYOUT_DIR`; during the first
     run a worker is SIGKILLed mid-extract, the scheduler is SIGKILLed, and S3 refuses connections for 30 s during a
     finalize or assemble (`bench/rehearsal_cluster.py`);
   - `both`: local, then celery-s3 on the same mirror;
4. triggers a run of every source through the REST API and waits (bounded), then an unchanged refresh, then a refresh
   after one source (AI2D) changed upstream;
5. measures each run: wall, per stage and per source, Airflow's own cost per task instance (queued, start-up before our
   code and after it, from the task-instance records and a listener inside each task process, `rehearsal_probe`)
   against the time in our code, peak RSS per task kind, XCom sizes, report.json / report.html sizes; then the audit
   page's response times and, on the local stack, `python -m mgdata verify` time and peak RSS over both training
   JSONs; on celery-s3 also S3 requests by verb per run (per image, per 1,000 images, bytes, prefixes touched), the
   CPU the store itself took (moto_server's process and the proxy's threads), task instances and peak RSS per
   worker, `python -m mgdata check` after the faulted run, and the layout from S3 against `s5cmd cp` of the same
   objects;
6. prints a table (with both stacks, side by side) and writes everything to WORK/rehearsal.json. Exit status 0 when
   every first run succeeded, every count equals the mirror's (and the cluster's the local run's), the faults were
   injected and survived with the store's invariant intact, the unchanged refresh fetched nothing and the
   one-changed refresh re-extracted only that source; else 1.

Everything it starts is stopped (the database dropped) also on failure; the work folder stays for inspection.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "deployment"))  # the deployment test's process harness

from processes import DAG, Deployment, wait_for_dag, wait_for_run  # noqa: E402
from s3_counter import Phases  # noqa: E402

from mgdata.catalog import load_catalog  # noqa: E402
from mgdata.storage import open_store  # noqa: E402
from offline_mirror import rehearsal  # noqa: E402
from offline_mirror.build import load_replicas  # noqa: E402

CHANGED = "ai2d"  # the source that changes upstream before the third run
CHANGED_SEED = "changed-seed.txt"  # in the mirror: the seed of its last change
PROBE = "probe.jsonl"
STAGES = ("plan", "fetch", "shard", "extract", "finalize")


class LocalDeployment(Deployment):
    """The deployment harness with the LocalExecutor (no workers, no triggerer) and a local-folder store."""

    def __init__(self, workdir: Path, *, catalog: Path, env: dict[str, str], parallelism: int):
        super().__init__(workdir, catalog=catalog, s3_endpoint="", s3_login="", s3_password="", workers=())
        self.extra_env = env
        self.parallelism = parallelism

    def environment(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in super().environment().items()
            if not k.startswith(("AIRFLOW__CELERY", "AIRFLOW_CONN_MGDATA_S3", "MGDATA_S3_CONN_ID"))
        }
        env.update(
            {
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": str(self.parallelism),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(self.workdir / "plugins"),
                **self.extra_env,
            }
        )
        return env

    def start(self, timeout: float = 300) -> None:
        for name in ("api-server", "scheduler", "dag-processor"):
            self._spawn(name, [name])
        deadline = time.monotonic() + timeout
        self._wait(deadline, "api-server", lambda: self._get_ok(f"{self.base_url}/api/v2/monitor/health"))
        self._wait(deadline, "scheduler", lambda: self._get_ok(f"http://127.0.0.1:{self.health_port}/health"))


# --- the steps ------------------------------------------------------------------------------------------------------


def build_mirror(work: Path, scale: float, instances: float) -> tuple[Path, float]:
    mirror = work / "mirror"
    if rehearsal.is_rehearsal(mirror):
        record = rehearsal.load_record(mirror)
        if (record["scale"], record["instances"]) == (scale, instances):
            return mirror, 0.0
    shutil.rmtree(mirror, ignore_errors=True)
    began = time.monotonic()
    cmd = [sys.executable, "-m", "offline_mirror", "build", str(mirror), "--scale", str(scale)]
    subprocess.run([*cmd, "--instances", str(instances)], check=True, stdout=subprocess.DEVNULL)
    return mirror, time.monotonic() - began


def serve_mirror(work: Path, mirror: Path, port: int = 0) -> tuple[subprocess.Popen, str, Path]:
    """The mirror on loopback (`port` 0: any free one); returns the server, its base URL and the catalog for it."""
    catalog, ready = work / "catalog.yaml", work / "mirror.ready"
    ready.unlink(missing_ok=True)
    log = (work / "mirror.log").open("w")
    cmd = [sys.executable, "-m", "offline_mirror", "serve", str(mirror), "--port", str(port)]
    cmd += ["--catalog-out", str(catalog), "--ready-file", str(ready)]
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 600  # the catalog step rewrites OCR-VQA's dataset.json for the real address
    while not (ready.is_file() and ready.read_text().strip()):
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the mirror server did not start; see {work / 'mirror.log'}")
        time.sleep(0.2)
    return server, ready.read_text().strip(), catalog


def plugins_folder(work: Path) -> None:
    """The repository's plugins plus the probe, as one plugins folder."""
    folder = work / "plugins"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for item in (ROOT / "plugins").iterdir():
        if item.name != "README.md":
            (folder / item.name).symlink_to(item)
    (folder / "rehearsal_probe.py").symlink_to(Path(__file__).with_name("rehearsal_probe.py"))


# --- measuring a run ------------------------------------------------------------------------------------------------


def _kind(task_id: str) -> str:
    return task_id.rsplit(".", 1)[-1]


def measure_run(d: Deployment, run_id: str, probe: list[dict], store) -> dict:
    rows = d.sql(
        "SELECT id::text, task_id, map_index, state, extract(epoch from queued_dttm), extract(epoch from start_date),"
        " extract(epoch from end_date) FROM task_instance WHERE run_id = %s",
        run_id,
    )
    by_ti = {p["ti"]: p for p in probe if p["run_id"] == run_id}
    ran = []
    for ti, task_id, map_index, state, queued, start, end in rows:
        if start is None or end is None:
            continue
        p = by_ti.get(ti) or {}
        code = (p["done"] - p["running"]) if p.get("running") else None
        ran.append({
            "task_id": task_id, "map_index": map_index, "state": state, "queued": float(queued or start),
            "start": float(start), "end": float(end), "code": code, "maxrss_mb": (p.get("maxrss_kb") or 0) / 1024,
            "startup": (p["running"] - float(start)) if p.get("running") else None,
        })  # fmt: skip
    if not ran:
        return {"task_instances": 0}
    t0, t1 = min(r["queued"] for r in ran), max(r["end"] for r in ran)
    slot = sum(r["end"] - r["start"] for r in ran)
    code = sum(r["code"] or 0 for r in ran)
    stages: dict[str, dict] = {}
    for stage in (*STAGES, "assemble", "verify", "check_sources"):
        group = [r for r in ran if _kind(r["task_id"]) == stage]
        if group:
            stages[stage] = {
                "instances": len(group),
                "wall": round(max(r["end"] for r in group) - min(r["start"] for r in group), 1),
                "slot_seconds": round(sum(r["end"] - r["start"] for r in group), 1),
                "code_seconds": round(sum(r["code"] or 0 for r in group), 1),
                "peak_rss_mb": round(max(r["maxrss_mb"] for r in group)),
            }
    sources: dict[str, dict] = {}
    for r in ran:
        if "." in r["task_id"]:
            s = sources.setdefault(
                r["task_id"].split(".")[0], {"start": r["start"], "end": r["end"], "instances": 0}
            )
            s["start"], s["end"] = min(s["start"], r["start"]), max(s["end"], r["end"])
            s["instances"] += 1
            if _kind(r["task_id"]) == "extract":
                s["extract_instances"] = s.get("extract_instances", 0) + 1
    for s in sources.values():
        s["wall"] = round(s.pop("end") - s.pop("start"), 1)
    xcom = d.sql(
        "SELECT task_id, count(*), coalesce(sum(octet_length(value::text)), 0), coalesce(max(octet_length(value::text)), 0)"
        " FROM xcom WHERE run_id = %s GROUP BY task_id",
        run_id,
    )
    xcoms: dict[str, dict] = defaultdict(lambda: {"count": 0, "bytes": 0, "max": 0})
    for task_id, count, total, largest in xcom:
        x = xcoms[_kind(task_id)]
        x["count"] += count
        x["bytes"] += int(total)
        x["max"] = max(x["max"], int(largest))
    return {
        "task_instances": len(ran),
        "wall": round(t1 - t0, 1),
        "slot_seconds": round(slot, 1),
        "code_seconds": round(code, 1),
        "airflow_in_slot_seconds": round(slot - code, 1),  # start-up before our code + teardown after it
        "airflow_share_of_slots": round((slot - code) / slot, 3) if slot else None,
        # from queued to running: waiting for a free slot included
        "queued_seconds": round(sum(r["start"] - r["queued"] for r in ran), 1),
        "startup_seconds_mean": round(_mean([r["startup"] for r in ran if r["startup"] is not None]), 2),
        "probed": sum(r["code"] is not None for r in ran),
        "stages": stages,
        "sources": dict(sorted(sources.items())),
        "xcom": dict(xcoms),
        "xcom_bytes": sum(x["bytes"] for x in xcoms.values()),
        "report_json_bytes": _size(store, f"runs/{run_id}/report.json"),
        "report_html_bytes": _size(store, f"runs/{run_id}/report.html"),
    }


def _only_dead_url_retries(source: dict) -> bool:
    extracting = [p for p in source.get("plan") or [] if p.get("extract")]
    return bool(extracting) and all(p.get("retry_dead") for p in extracting)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _size(store, key: str) -> int | None:
    info = store.stat(key)
    return info.size if info else None


def read_probe(work: Path) -> list[dict]:
    path = work / PROBE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def audit_times(d: Deployment, run_id: str) -> dict:
    out = {}
    for label, path in (("list", "/mgdata-audit/"), ("run", f"/mgdata-audit/runs/{run_id}")):
        times, status = [], None
        for _ in range(3):
            began = time.monotonic()
            response = d.get(path)
            times.append(time.monotonic() - began)
            status = response.status_code
        out[label] = {"status": status, "seconds": round(sorted(times)[1], 3), "bytes": len(response.content)}
    return out


def verify_times(store_root: Path, layout: Path) -> dict:
    """`python -m mgdata verify --fast` over both training JSONs in one command (one process per JSON): wall and
    peak RSS of the existence check (the parent's and its largest worker's). The verdict's own check, which opens
    every image as the trainer does, is the DAG's `verify` task: its time and memory are in the stage table."""
    cmd = [sys.executable, "-m", "mgdata", "verify", "--fast", "--data", str(layout)]
    names = []
    for json_file in sorted((store_root / "annotations" / "train_json").glob("*.json")):
        boxes = store_root / "annotations" / "bbox_json" / "train" / (json_file.stem + "_only_box.json")
        cmd += ["--json", str(json_file), "--boxes", str(boxes)]
        names.append(json_file.name)
    began = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        " + ".join(names): {
            "seconds": round(time.monotonic() - began, 1),
            "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "exit": proc.returncode,
            "verdict": next((line for line in output.splitlines() if "ready" in line), output[-300:]),
        }
    }


# --- checks ---------------------------------------------------------------------------------------------------------


def check_counts(report: dict, mirror: Path) -> list[str]:
    """Every source's manifest counts equal what the mirror holds."""
    expected: dict[str, dict[str, int]] = defaultdict(lambda: {"usable": 0, "invalid": 0, "missing": 0})
    for r in load_replicas(mirror):
        if r.images or r.broken:
            e = expected[r.source]
            e["usable"] += r.images
            e["invalid"] += r.broken
            e["missing"] += r.missing
    docvqa = rehearsal.load_record(mirror)["docvqa"]
    expected["docvqa"] = {"usable": docvqa["images"], "invalid": docvqa["broken"], "missing": 0}
    problems = []
    for name, e in sorted(expected.items()):
        s = report["sources"].get(name)
        if s is None:
            problems.append(f"{name}: not in the report")
            continue
        got = {"usable": s["images_ok"] + s["images_normalized"], "invalid": s["images_invalid"],
               "missing": s.get("images_missing") or 0}  # fmt: skip
        if s["status"] != "ok" or got != e:
            problems.append(f"{name}: {s['status']} {got} != mirror {e} ({s.get('error')})")
    return problems


def change_source(mirror: Path, base_url: str, catalog: Path, seed: int) -> None:
    """AI2D changes upstream: its archive is rebuilt with another seed and the catalog pins the new bytes."""
    record = rehearsal.load_record(mirror)
    (archive,) = [a for a in rehearsal.ARCHIVES if a.source == CHANGED]
    raw = __import__("yaml").safe_load(rehearsal.SHIPPED_CATALOG.read_text())
    built = rehearsal.build_archive(mirror, archive, record["scale"], seed, raw)
    replicas = [built.replica if r.source == CHANGED else r for r in load_replicas(mirror)]
    from dataclasses import asdict

    from offline_mirror.build import REPLICAS_JSON
    from offline_mirror.media import write_text_atomic

    write_text_atomic(mirror / REPLICAS_JSON, json.dumps([asdict(r) for r in replicas], indent=1) + "\n")
    write_text_atomic(mirror / CHANGED_SEED, f"{seed}\n")
    rehearsal.write_catalog(mirror, base_url, replicas, out=catalog)


def last_change_seed(mirror: Path) -> int:
    """The seed AI2D was last rebuilt with in this mirror (0: never). A rehearsal on a kept mirror starts from that
    change, so its own change must use another seed, or AI2D would come out byte for byte as it already is."""
    path = mirror / CHANGED_SEED
    return int(path.read_text()) if path.is_file() else 0


# --- the table ------------------------------------------------------------------------------------------------------


def table(result: dict) -> str:
    lines = [f"rehearsal at scale {result['scale']} ({result['files']:,} files, {result['mirror_bytes'] / 1e9:.2f} GB; "
             f"mirror built in {result['mirror_build_seconds']:.0f} s), {result['cores']} cores, "
             f"load average {result['load_before']} -> {result['load_after']}"]  # fmt: skip
    for stack, r in result["stacks"].items():
        lines.append(f"\n===== {stack}: {r.get('settings')}")
        lines += stack_lines(r)
    if len(result["stacks"]) > 1:
        lines += ["", side_by_side(result["stacks"])]
    lines += [f"PROBLEM: {p}" for p in result["problems"]] or ["outcome: as expected"]
    return "\n".join(lines)


def stack_lines(r: dict) -> list[str]:
    lines = []
    for label, run in r["runs"].items():
        m = run.get("measure", {})
        lines.append(
            f"\n{label}: {run['state']} in {run['seconds']:.0f} s; {m.get('task_instances', 0)} task instances, "
            f"slots {m.get('slot_seconds', 0):.0f} s of which our code {m.get('code_seconds', 0):.0f} s, Airflow "
            f"{m.get('airflow_in_slot_seconds', 0):.0f} s ({(m.get('airflow_share_of_slots') or 0) * 100:.0f} %); "
            f"start-up before our code {m.get('startup_seconds_mean', 0):.1f} s per instance; "
            f"queued {m.get('queued_seconds', 0):.0f} s; fetched {run.get('bytes_fetched', 0):,} bytes; "
            f"XCom {m.get('xcom_bytes', 0):,} B; report.json {m.get('report_json_bytes') or 0:,} B, "
            f"report.html {m.get('report_html_bytes') or 0:,} B"
        )
        if m.get("stages"):
            lines.append(
                f"  {'stage':14} {'inst':>5} {'wall s':>8} {'slot s':>8} {'code s':>8} {'peak MB':>8}"
            )
            for stage, s in m["stages"].items():
                lines.append(f"  {stage:14} {s['instances']:5} {s['wall']:8.1f} {s['slot_seconds']:8.1f} "
                             f"{s['code_seconds']:8.1f} {s['peak_rss_mb']:8}")  # fmt: skip
        if label == "first" and m.get("sources"):
            lines.append(f"  {'source':22} {'inst':>5} {'extract':>7} {'wall s':>8}")
            for name, s in m["sources"].items():
                lines.append(
                    f"  {name:22} {s['instances']:5} {s.get('extract_instances', 0):7} {s['wall']:8.1f}"
                )
        if run.get("extracted_sources") is not None:
            lines.append(
                f"  sources re-extracted: {run['extracted_sources'] or 'none'}; "
                f"dead URLs retried: {run['dead_url_retries'] or 'none'}"
            )
        if run.get("s3"):
            c = run["s3"]
            verbs = ", ".join(f"{v} {n:,} ({c['verbs_per_image'][v]:.3f})" for v, n in c["verbs"].items())
            lines.append(
                f"  S3: {c['requests']:,} requests, {c['per_image']:.3f} per image, {c['per_1000_images']:.2f} per "
                f"1,000 images; {verbs}; written {c['bytes_written']:,} B, read {c['bytes_read']:,} B; "
                f"bucket-wide lists {c['bucket_wide_lists']}; data/ prefixes written {c['data_prefixes_written'] or 'none'}"
            )
            cpu = c["store_cpu_seconds"]
            lines.append(
                f"  the store's own CPU on this machine: moto_server {cpu['moto_server']} s, proxy {cpu['proxy']} s "
                f"({c['store_cpu_ms_per_request']} ms per request), {c['store_share_of_machine_cpu'] * 100:.0f} % of "
                "the machine's CPU over the run"
            )
        if run.get("workers"):
            lines.append(f"  per worker: {run['workers']}")
    for name, v in r.get("verify", {}).items():
        lines.append(f"verify {name}: {v['seconds']} s, peak RSS {v['peak_rss_mb']} MB, exit {v['exit']}")
    for label, a in r.get("audit", {}).items():
        lines.append(f"audit page {label}: {a['status']} in {a['seconds']} s ({a['bytes']:,} bytes)")
    if r.get("faults"):
        lines.append(f"faults: {json.dumps(r['faults'])}")
    if r.get("check"):
        lines.append(f"mgdata check after the first run: clean {r['check']['clean']} ({r['check']['seconds']} s); "
                     f"open multipart uploads {r.get('open_multipart_uploads')}")  # fmt: skip
    if r.get("layout_vs_s5cmd"):
        x = r["layout_vs_s5cmd"]
        lines.append(f"layout from S3: ours {x['objects']:,} objects in {x['ours_seconds']} s ({x['ours_objects_per_s']}/s), "
                     f"s5cmd cp {x['s5cmd_objects']:,} in {x['s5cmd_seconds']} s ({x['s5cmd_objects_per_s']}/s): "
                     f"{x['ours_vs_s5cmd']}x")  # fmt: skip
    lines.append(f"airflow components' own CPU: {r.get('component_cpu_seconds')}")
    return lines


def side_by_side(stacks: dict) -> str:
    """One row per figure, one column per stack."""
    names = list(stacks)
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, get) -> None:
        values = []
        for n in names:
            try:
                values.append(get(stacks[n]))
            except (KeyError, TypeError, ZeroDivisionError):
                values.append("-")
        rows.append((label, values))

    for run in ("first", "unchanged_refresh", "one_changed_refresh"):
        row(
            f"{run}: state, wall s",
            lambda r, run=run: f"{r['runs'][run]['state']}, {r['runs'][run]['seconds']:.0f}",
        )
        row(f"{run}: Airflow share of slots",
            lambda r, run=run: f"{r['runs'][run]['measure']['airflow_share_of_slots'] * 100:.0f} %")  # fmt: skip
        row(f"{run}: S3 requests (per image)",
            lambda r, run=run: f"{r['runs'][run]['s3']['requests']:,} ({r['runs'][run]['s3']['per_image']:.3f})")  # fmt: skip
        row(f"{run}: S3 PUT / GET / HEAD / LIST",
            lambda r, run=run: " / ".join(str(r["runs"][run]["s3"]["verbs"].get(v, 0)) for v in ("PUT", "GET", "HEAD", "LIST")))  # fmt: skip
        row(f"{run}: store CPU s (share of machine)",
            lambda r, run=run: f"{sum(r['runs'][run]['s3']['store_cpu_seconds'].values()):.0f} ({r['runs'][run]['s3']['store_share_of_machine_cpu'] * 100:.0f} %)")  # fmt: skip
    row(
        "first: peak RSS, extract",
        lambda r: f"{r['runs']['first']['measure']['stages']['extract']['peak_rss_mb']} MB",
    )
    row("first: peak RSS, any task",
        lambda r: f"{max(s['peak_rss_mb'] for s in r['runs']['first']['measure']['stages'].values())} MB")  # fmt: skip
    row("layout from S3 / s5cmd (objects/s)",
        lambda r: f"{r['layout_vs_s5cmd']['ours_objects_per_s']} / {r['layout_vs_s5cmd']['s5cmd_objects_per_s']}")  # fmt: skip
    first = {n: stacks[n]["runs"].get("first", {}).get("seconds") for n in names}
    if first.get("local") and first.get("celery-s3"):
        rows.append(("celery-s3 first wall / local", ["", f"{first['celery-s3'] / first['local']:.2f}x"]))
    width = max(len(label) for label, _ in rows) + 2
    out = [f"{'':{width}}" + "".join(f"{n:>28}" for n in names)]
    out += [f"{label:{width}}" + "".join(f"{v:>28}" for v in values) for label, values in rows]
    return "\n".join(out)


# --- the stacks -----------------------------------------------------------------------------------------------------


def images_in(mirror: Path) -> int:
    """Image members of the whole mirror (usable + broken), DocVQA's inbox archive included."""
    total = sum(r.images + r.broken for r in load_replicas(mirror))
    docvqa = rehearsal.load_record(mirror)["docvqa"]
    return total + docvqa["images"] + docvqa["broken"]


def counts_of(report: dict) -> dict[str, tuple]:
    return {
        n: (s["images_ok"] + s["images_normalized"], s["images_invalid"], s.get("images_missing") or 0)
        for n, s in report["sources"].items()
    }


def run_stack(
    stack: str, args, work: Path, mirror: Path, serving: dict, seed: int, local_first: float | None
) -> dict:
    """One stack's three runs (or two, --refreshes-only) on the mirror; returns its part of rehearsal.json."""
    import bench.rehearsal_cluster as cluster

    base = work if stack == "local" else work / stack
    base.mkdir(parents=True, exist_ok=True)
    record = rehearsal.load_record(mirror)
    out: dict = {"runs": {}, "problems": []}
    refreshes_only = args.refreshes_only and stack == "local"
    for stale in (
        ("airflow", "logs", PROBE) if refreshes_only else ("store", "data", "airflow", "logs", PROBE)
    ):
        path = base / stale
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    base_url, catalog = serving["base_url"], serving["catalog"]
    layout = base / "data"
    plugins_folder(base)
    env = {
        "MGDATA_LAYOUT_DIR": str(layout), "HF_ENDPOINT": base_url,
        "MGDATA_GDRIVE_URL": f"{base_url}/drive.google.com", "MGDATA_REHEARSAL_PROBE": str(base / PROBE),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(base / "plugins"),
    }  # fmt: skip
    s3 = None
    if stack == "local":
        store = open_store(f"file://{base / 'store'}")
        env.update(MGDATA_STORAGE=f"file://{base / 'store'}", MGDATA_EXTRACT_THREADS="2")
        d: Deployment = LocalDeployment(base, catalog=catalog, env=env, parallelism=args.parallelism)
        out["settings"] = {"executor": "LocalExecutor", "parallelism": args.parallelism, "MGDATA_EXTRACT_THREADS": 2,
                           "store": "local folder"}  # fmt: skip
    else:
        s3 = cluster.S3Stack()
        store = s3.store
        d = cluster.deployment(base, catalog, s3, env)
        out["settings"] = {
            "executor": "CeleryExecutor",
            **cluster.settings(),
            "store": "S3 (moto_server behind the counting proxy)",
        }
    if not refreshes_only:
        store.put_file("inbox/docvqa/train.tar.gz", mirror / record["docvqa"]["relpath"])
    images = images_in(mirror)
    phases = Phases(s3.counter) if s3 else None
    try:
        d.setup()
        d.start()
        wait_for_dag(d, timeout=300)
        d.api("PATCH", f"dags/{DAG}", json={"is_paused": False})
        steps = (("first", {}), ("unchanged_refresh", {}), ("one_changed_refresh", {}))
        for label, conf in steps[1:] if refreshes_only else steps:
            if label == "one_changed_refresh":
                change_source(mirror, base_url, catalog, seed=seed)
                time.sleep(6)  # the dag-processor re-parses on its 5 s refresh interval
            run_id = f"rehearsal-{label}" + (f"-{seed}" if refreshes_only else "")
            faults = None
            if s3 and label == "first" and not args.no_faults:
                rng = random.Random(args.seed)
                faults = cluster.Faults(
                    d, s3, load_catalog(catalog), run_id, rng, local_first or args.expected_seconds
                )
            with phases.measure(label) if phases else contextlib.nullcontext():
                d.api(
                    "POST",
                    f"dags/{DAG}/dagRuns",
                    json={"dag_run_id": run_id, "logical_date": None, "conf": conf},
                )
                if faults:
                    faults.start()
                state, seconds = wait_run(d, run_id, args.timeout)
            run = {"run_id": run_id, "state": state, "seconds": round(seconds, 1)}
            out["runs"][label] = run
            if faults:
                out["faults"] = faults.finish()
                out["problems"] += faults.errors + faults.recovered()
            report = (
                json.loads(store.read_bytes(f"runs/{run_id}/report.json"))
                if store.exists(f"runs/{run_id}/report.json")
                else None
            )
            probe = read_probe(base)
            run["measure"] = measure_run(d, run_id, probe, store)
            if phases:
                run["s3"] = cluster.counts_json(phases[label], images, seconds)
                run["workers"] = cluster.per_worker(d, run_id, probe)
            if report:
                run["bytes_fetched"] = report["totals"]["bytes_fetched"]
                run["files_fetched"] = report["totals"]["files_fetched"]
                run["layout"] = report.get("layout")
                run["ready_to_train"] = {k: report["ready_to_train"].get(k) for k in
                                         ("ready", "note", "referenced", "present", "missing", "broken")}  # fmt: skip
                # OCR-VQA retries its dead URLs on every run, on purpose (the plan says so): not a re-extraction
                retried = {n for n, s in report["sources"].items() if _only_dead_url_retries(s)}
                run["dead_url_retries"] = sorted(retried)
                run["extracted_sources"] = sorted(
                    n for n, s in report["sources"].items() if s.get("files_extracted") and n not in retried
                )
            if label == "first":
                if state != "success" or not report:
                    out["problems"].append(f"first run {state}")
                    break
                out["problems"] += check_counts(report, mirror)
                out["counts"] = counts_of(report)
                out["audit"] = audit_times(d, run_id)
                if stack == "local":
                    out["verify"] = verify_times(base / "store", layout)
                else:
                    out["check"] = cluster.check_store(d)
                    out["open_multipart_uploads"] = cluster.open_multipart_uploads(s3)
                    if not out["check"]["clean"] or out["open_multipart_uploads"]:
                        out["problems"].append(
                            f"mgdata check after the first run: {out['check']['output'][-5:]}"
                        )
                    out["layout_vs_s5cmd"] = cluster.layout_vs_s5cmd(s3, load_catalog(catalog), base)
            elif label == "unchanged_refresh" and (state != "success" or run.get("bytes_fetched")):
                out["problems"].append(
                    f"unchanged refresh: {state}, {run.get('bytes_fetched')} bytes fetched"
                )
            elif label == "one_changed_refresh" and (
                state != "success" or run.get("extracted_sources") != [CHANGED]
            ):
                out["problems"].append(
                    f"one-changed refresh: {state}, re-extracted {run.get('extracted_sources')}"
                )
            if state == "timeout":
                break
        out["component_cpu_seconds"] = d.cpu_seconds()
        out["component_peak_rss_mb"] = d.peak_rss_mb()
    except BaseException as e:
        out["problems"].append(f"{type(e).__name__}: {e}")
        print(d.tails(), file=sys.stderr)
        raise
    finally:
        d.stop()
        if s3:
            s3.close()
        out["logs"] = str(d.logs)
    return out


def wait_run(d: Deployment, run_id: str, timeout: float) -> tuple[str, float]:
    """Wait for a triggered run: its end state (or "timeout") and the seconds since it was triggered."""
    began = time.monotonic()
    try:
        return wait_for_run(d, run_id, timeout), time.monotonic() - began
    except AssertionError as e:
        if "not finished" not in str(e):
            raise
        return "timeout", time.monotonic() - began


# --- main -----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rehearsal", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scale", type=rehearsal.parse_scale, default=0.01, help="full, 0.1, 0.01 (default), ..."
    )
    parser.add_argument(
        "--instances", type=float, default=1.0, help="fraction of the real run's extract instances"
    )
    parser.add_argument(
        "--stack", choices=("local", "celery-s3", "both"), default="local",
        help="local: LocalExecutor on a local-folder store (default); celery-s3: two Celery workers on S3 with "
             "faults injected into the first run; both: local, then celery-s3 on the same mirror, side by side",
    )  # fmt: skip
    parser.add_argument(
        "--work", type=Path, default=ROOT / "rehearsal", help="work folder (default ./rehearsal)"
    )
    parser.add_argument(
        "--timeout", type=float, default=5400, help="seconds each run may take (default 5400)"
    )
    parser.add_argument("--parallelism", type=int, default=os.cpu_count() or 2, help="LocalExecutor slots")
    parser.add_argument(
        "--refreshes-only", action="store_true",
        help="local stack: keep the store and data/ of the last rehearsal in --work (same scale) and run only the "
             "two refreshes",
    )  # fmt: skip
    parser.add_argument(
        "--seed", type=int, default=None, help="celery-s3: the faults' random seed (default: any)"
    )
    parser.add_argument("--no-faults", action="store_true", help="celery-s3: no faults in the first run")
    parser.add_argument(
        "--expected-seconds", type=float, default=600,
        help="celery-s3 alone: about how long its first run takes (the scheduler kill falls in 10-60 %% of it); "
             "with --stack both, the local first run's wall",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.refreshes_only and args.stack != "local":
        parser.error("--refreshes-only is for the local stack")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**32)
    work: Path = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    stacks = ("local", "celery-s3") if args.stack == "both" else (args.stack,)
    result: dict = {"scale": args.scale, "instances": args.instances, "cores": os.cpu_count(), "stack": args.stack,
                    "parallelism": args.parallelism, "load_before": os.getloadavg()[0], "seed": args.seed,
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "stacks": {}, "problems": []}  # fmt: skip
    began = time.monotonic()
    mirror, build_seconds = build_mirror(work, args.scale, args.instances)
    record = rehearsal.load_record(mirror)
    result.update(files=record["files"], mirror_bytes=record["bytes"], mirror_build_seconds=round(build_seconds, 1),
                  mirror_files_per_second=record["files_per_second"], shard_bytes=record["shard_bytes"],
                  expected_extract_instances=rehearsal.real_instances(args.scale, args.instances),
                  images=images_in(mirror))  # fmt: skip
    if args.refreshes_only and not (work / "store" / "runs").is_dir():
        parser.error(f"--refreshes-only: no earlier rehearsal's store in {work}")
    # A refreshes-only rehearsal serves the mirror where the store last saw it: OCR-VQA's URL list names the
    # cover host's address, so a new port would be a changed upstream (every cover fetched again).
    last = work / "mirror.url"
    port = int(last.read_text().strip().rsplit(":", 1)[1]) if args.refreshes_only and last.is_file() else 0
    server, base_url, catalog = serve_mirror(work, mirror, port)
    last.write_text(base_url + "\n")
    serving = {"base_url": base_url, "catalog": catalog}
    try:
        for i, stack in enumerate(stacks):
            # a refreshes-only rehearsal changes AI2D again, so its seed must differ from every earlier one's; each
            # stack changes it anew (the second sees the first's change as its starting point)
            seed = int(time.time()) if args.refreshes_only else last_change_seed(mirror) + 1 + i
            local_first = result["stacks"].get("local", {}).get("runs", {}).get("first", {}).get("seconds")
            r = result["stacks"][stack] = {}
            try:
                r.update(run_stack(stack, args, work, mirror, serving, seed, local_first))
            finally:
                result["problems"] += [f"{stack}: {p}" for p in r.get("problems", [])]
        if "local" in result["stacks"] and "celery-s3" in result["stacks"]:
            result["problems"] += compare_counts(result["stacks"]["local"], result["stacks"]["celery-s3"])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
        result["load_after"] = os.getloadavg()[0]
        result["total_seconds"] = round(time.monotonic() - began, 1)
        if "local" in result["stacks"]:  # the keys the local rehearsal has always written
            for key in ("runs", "verify", "audit", "component_cpu_seconds"):
                if key in result["stacks"]["local"]:
                    result[key] = result["stacks"]["local"][key]
        (work / "rehearsal.json").write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(f"\nwritten: {work / 'rehearsal.json'}; total {result['total_seconds']:.0f} s")
    return 1 if result["problems"] else 0


def compare_counts(local: dict, cluster: dict) -> list[str]:
    """The faulted cluster run's per-source counts equal the undisturbed local run's. AI2D is the exception when
    the local stack changed it before the cluster's first run: there both must equal the mirror (check_counts)."""
    a, b = local.get("counts") or {}, cluster.get("counts") or {}
    if not a or not b:
        return []
    return [
        f"counts differ from the local run's: {n} {b.get(n)} != {a.get(n)}"
        for n in sorted(set(a) | set(b))
        if n != CHANGED and a.get(n) != b.get(n)
    ]


if __name__ == "__main__":
    sys.exit(main())
