"""The rehearsal's cluster stack (`--stack celery-s3`): the store on S3, two Celery workers, faults on the first run.

S3 is `moto_server` in its own process on loopback, behind the deployment test's counting proxy (`s3_counter`); the
deployment's `mgdata_s3` Airflow connection points at the proxy (path-style, bucket `mgdata`, credentials made up
for the run and never printed), so every request of every task is counted by verb at the server side, while the
rehearsal's own client (the DocVQA inbox, the layout comparison) talks to moto directly and is not counted.

`Faults` injects, during the first run, each at a random point inside its window (the choices are in
rehearsal.json):

- a worker SIGKILLed, with its pool and task processes, while it runs an `extract` whose source prefix has had
  objects written since the instance started (the only running extract under that prefix, so the objects are that
  shard's), and started again WORKER_DOWN seconds later;
- the scheduler SIGKILLed once at a random time of the run and started again SCHEDULER_DOWN seconds later;
- the S3 endpoint refusing connections for OUTAGE seconds, starting while a `finalize` or `assemble` runs (the proxy
  closes its listening socket and every open connection).

Nobody acts after that; the run must end in success. `layout_vs_s5cmd` times the layout of the store's data/
from S3 (the code assemble runs) against `s5cmd cp 's3://bucket/prefix/data/*' dir/` over the same objects.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from random import Random

from deployment_env import BUCKET, STORAGE
from processes import Deployment, free_port
from s3_counter import Counts, S3Counter, moto_server

from mgdata import manifest
from mgdata.catalog import Catalog
from mgdata.storage import open_store, s3_client

STORE_PREFIX = STORAGE.removeprefix(f"s3://{BUCKET}/")
WORKERS = ("w1", "w2")
# 2 cores: two workers of 2 slots each (4 task processes) overlap the S3 requests of one task with the CPU of
# another; 2 threads per extract keep inflate, hash and decode of a shard on about one core.
CONCURRENCY = 2
EXTRACT_THREADS = 2
RETRY_DELAY = 15  # MGDATA_RETRY_DELAY_SECONDS: a try cut off by a fault runs again 15 s (then 30 s) later
WORKER_DOWN = 20
SCHEDULER_DOWN = 5
OUTAGE = 30
S3_LOGIN = "AKIAREHEARSAL"


class S3Stack:
    """moto_server + the counting proxy + a direct client and store."""

    def __init__(self) -> None:
        self.secret = secrets.token_urlsafe(24)
        port = free_port()
        self.server = moto_server(port)
        self.direct = f"http://127.0.0.1:{port}"
        self.counter = S3Counter(
            self.direct, area_prefix=f"/{BUCKET}/{STORE_PREFIX}/", server_pid=self.server.pid
        ).start()
        self.client = s3_client(
            endpoint_url=self.direct,
            aws_access_key_id=S3_LOGIN,
            aws_secret_access_key=self.secret,
            region_name="us-east-1",
        )
        self.client.create_bucket(Bucket=BUCKET)
        self.store = open_store(STORAGE, client=self.client)

    def close(self) -> None:
        self.counter.stop()
        self.server.terminate()
        self.server.wait()


def deployment(work: Path, catalog: Path, s3: S3Stack, env: dict[str, str]) -> Deployment:
    """api-server, scheduler, dag-processor and two Celery workers with the deployment's settings."""
    env = {
        **env,
        "MGDATA_EXTRACT_THREADS": str(EXTRACT_THREADS),
        "MGDATA_RETRY_DELAY_SECONDS": str(RETRY_DELAY),
        "AIRFLOW__CORE__PARALLELISM": str(CONCURRENCY * len(WORKERS)),
    }
    return Deployment(
        work,
        catalog=catalog,
        s3_endpoint=s3.counter.endpoint,
        s3_login=S3_LOGIN,
        s3_password=s3.secret,
        workers=WORKERS,
        concurrency=CONCURRENCY,
        triggerer=False,
        extra_env=env,
    )


def settings() -> dict:
    return {
        "workers": len(WORKERS),
        "worker_concurrency": CONCURRENCY,
        "parallelism": CONCURRENCY * len(WORKERS),
        "MGDATA_EXTRACT_THREADS": EXTRACT_THREADS,
        "MGDATA_RETRY_DELAY_SECONDS": RETRY_DELAY,
        "task_instance_heartbeat_timeout": 30,
    }


# --- faults ---------------------------------------------------------------------------------------------------------


class Faults:
    """The first run's three faults, each in its own thread; `records` says what was done when."""

    def __init__(
        self, d: Deployment, s3: S3Stack, catalog: Catalog, run_id: str, rng: Random, run_seconds: float
    ):
        self.d, self.s3, self.run_id, self.rng = d, s3, run_id, rng
        self.run_seconds = run_seconds  # about how long the run takes (the scheduler kill's window)
        self.prefixes = {
            name: {f"data/{p.split('/')[0]}" for p in source.layout}
            for name, source in catalog.sources.items()
        }
        self.records: dict[str, dict] = {}
        self.errors: list[str] = []
        self.done = threading.Event()
        self.began = time.time()
        self.threads = [
            threading.Thread(target=self._guard, args=(f,), name=f.__name__, daemon=True)
            for f in (self.kill_worker, self.kill_scheduler, self.s3_outage)
        ]

    def start(self) -> Faults:
        for t in self.threads:
            t.start()
        return self

    def finish(self) -> dict:
        """After the run: stop waiting for windows that never came; returns the records (missing ones named)."""
        self.done.set()
        for t in self.threads:
            t.join(WORKER_DOWN + OUTAGE + 180)
        for fault in ("worker_kill", "scheduler_kill", "s3_outage"):
            if fault not in self.records:
                self.errors.append(f"{fault} was not injected (its window did not come)")
        return self.records

    def _guard(self, fault) -> None:
        try:
            fault()
        except Exception as e:  # recorded: the rehearsal fails on it
            self.errors.append(f"{fault.__name__}: {type(e).__name__}: {e}")

    def _running(self, *kinds: str) -> list[tuple]:
        rows = self.d.sql(
            "SELECT task_id, map_index, hostname, try_number FROM task_instance"
            " WHERE run_id = %s AND state = 'running'",
            self.run_id,
        )
        return [r for r in rows if r[0].rsplit(".", 1)[-1] in kinds]

    def _writes(self, prefixes: set[str]) -> int:
        snap: Counts = self.s3.counter.snapshot()
        return sum(n for (verb, prefix), n in snap.prefixes.items() if verb == "PUT" and prefix in prefixes)

    def _at(self) -> float:
        return round(time.time() - self.began, 1)

    def kill_worker(self) -> None:
        """SIGKILL the worker running an extract after a random number (3-25) of that shard's objects were
        written; start it again WORKER_DOWN s later."""
        while not self.done.is_set():
            running = [r for r in self._running("extract") if r[2]]
            by_prefix = Counter(p for r in running for p in self.prefixes[r[0].split(".")[0]])
            alone = [r for r in running if all(by_prefix[p] == 1 for p in self.prefixes[r[0].split(".")[0]])]
            if not alone:
                time.sleep(0.3)
                continue
            chosen = self.rng.choice(alone)
            prefixes = self.prefixes[chosen[0].split(".")[0]]
            want, base = self.rng.randint(3, 25), self._writes(prefixes)
            while not self.done.is_set():
                now = self._running("extract")
                if chosen not in now or sum(
                    p in prefixes for r in now for p in self.prefixes[r[0].split(".")[0]]
                ) != len(prefixes):
                    break  # it ended, or another extract writes under the same prefix: choose again
                written = self._writes(prefixes) - base
                if written >= want:
                    worker = chosen[2]
                    victims = [r for r in now if r[2] == worker]
                    at = self._at()
                    self.d.kill_worker(worker)
                    self.records["worker_kill"] = {
                        "worker": worker, "at_s": at, "task": f"{chosen[0]}[{chosen[1]}]", "try": chosen[3],
                        "objects_written_before": written,
                        "running_on_it": [{"task_id": r[0], "map_index": r[1], "try_number": r[3]} for r in victims],
                    }  # fmt: skip
                    time.sleep(WORKER_DOWN)
                    self.d.start_worker(worker)
                    self.records["worker_kill"]["restarted_at_s"] = self._at()
                    return
                time.sleep(0.1)

    def kill_scheduler(self) -> None:
        """SIGKILL the scheduler at a random time between 10 % and 60 % of the expected run; start it again."""
        delay = self.rng.uniform(0.1, 0.6) * self.run_seconds
        if self.done.wait(delay):
            return
        at = self._at()
        self.d.kill("scheduler")
        time.sleep(SCHEDULER_DOWN)
        self.d.restart_scheduler()
        self.records["scheduler_kill"] = {
            "at_s": at,
            "restarted_at_s": self._at(),
            "planned_delay_s": round(delay, 1),
        }

    def s3_outage(self) -> None:
        """Once a finalize or assemble runs, after a random 0-1 s (if it still runs), refuse S3 for OUTAGE s."""
        while not self.done.is_set():
            running = self._running("finalize", "assemble")
            if not running:
                time.sleep(0.2)
                continue
            chosen = self.rng.choice(running)
            time.sleep(self.rng.uniform(0, 1.0))
            if chosen not in self._running("finalize", "assemble"):
                continue
            at, before = self._at(), self.s3.counter.snapshot()
            self.s3.counter.refuse(OUTAGE)
            self.records["s3_outage"] = {
                "at_s": at, "seconds": OUTAGE, "during": f"{chosen[0]} try {chosen[3]}",
                # requests cut off on open keep-alive connections; refused connects never reach the proxy's counts
                "requests_refused": (self.s3.counter.snapshot() - before).refused,
            }  # fmt: skip
            return

    def recovered(self) -> list[str]:
        """Problems: an instance the worker kill cut off that did not run again and succeed."""
        # every try that did not succeed (the kills' and the outage's victims), seconds after the run was triggered
        self.records["failed_tries"] = [
            {
                "task": f"{t}[{m}]",
                "try": n,
                "state": s,
                "ended_at_s": round(float(end) - self.began, 1) if end else None,
            }
            for t, m, n, s, end in self.d.sql(
                "SELECT task_id, map_index, try_number, state, extract(epoch from end_date) FROM task_instance_history"
                " WHERE run_id = %s ORDER BY end_date",
                self.run_id,
            )
        ]
        kill = self.records.get("worker_kill")
        if not kill:
            return []
        final = {
            (t, m): (state, tries)
            for t, m, state, tries in self.d.sql(
                "SELECT task_id, map_index, state, try_number FROM task_instance WHERE run_id = %s",
                self.run_id,
            )
        }
        problems = []
        for ti in kill["running_on_it"]:
            state, tries = final.get((ti["task_id"], ti["map_index"]), (None, 0))
            ti["after"] = {"state": state, "try_number": tries}
            if state != "success" or tries <= ti["try_number"]:
                problems.append(
                    f"{ti['task_id']}[{ti['map_index']}] after the worker kill: {state} try {tries}"
                )
        return problems


# --- measuring ------------------------------------------------------------------------------------------------------


def counts_json(c: Counts, images: int, seconds: float) -> dict:
    """A phase of `seconds`: its requests by verb (absolute and per image), per 1,000 images, bytes, what it
    touched, and the CPU the store took."""
    lists = {prefix or "(bucket)": n for (verb, prefix), n in sorted(c.prefixes.items()) if verb == "LIST"}
    return {
        "requests": c.requests,
        "per_image": round(c.requests / images, 4),
        "per_1000_images": round(1000 * c.requests / images, 2),
        "verbs": dict(c.verbs),
        "verbs_per_image": {v: round(n / images, 4) for v, n in c.verbs.items()},
        "multipart": c.multipart,
        "written_by_area": dict(c.written),
        "bytes_written": c.bytes_in,
        "bytes_read": c.bytes_out,
        "bucket_wide_lists": c.areas["LIST", ""],
        "lists_by_prefix": lists,
        "data_prefixes_touched": sorted(
            {p for (_, p), n in c.prefixes.items() if p.startswith("data/") and n}
        ),
        "data_prefixes_written": sorted(
            {p for (v, p), n in c.prefixes.items() if p.startswith("data/") and v == "PUT"}
        ),
        # every prefix (area/source) an object was created or deleted under: a refresh must stay inside its sources'
        "prefixes_written": sorted(
            {p for (v, p), n in c.prefixes.items() if n and v in ("PUT", "COPY", "MPU_CREATE", "DELETE")}
        ),
        "refused": c.refused,
        # what the store cost this machine's cores: a real S3 endpoint costs them neither
        "store_cpu_seconds": {"moto_server": round(c.server_cpu, 1), "proxy": round(c.proxy_cpu, 1)},
        "store_cpu_ms_per_request": round(1000 * (c.server_cpu + c.proxy_cpu) / max(c.requests, 1), 2),
        "store_share_of_machine_cpu": round(
            (c.server_cpu + c.proxy_cpu) / ((os.cpu_count() or 1) * seconds), 3
        ),
    }


def per_worker(d: Deployment, run_id: str, probe: list[dict]) -> dict:
    """Task instances (extract ones apart) and the peak RSS of each worker's task processes; the worker's own."""
    out: dict[str, dict] = {}
    for host, task_id, n in d.sql(
        "SELECT hostname, task_id, count(*) FROM task_instance WHERE run_id = %s AND hostname <> ''"
        " GROUP BY hostname, task_id",
        run_id,
    ):
        w = out.setdefault(host, {"instances": 0, "extract_instances": 0})
        w["instances"] += n
        if task_id.endswith(".extract"):
            w["extract_instances"] += n
    for p in probe:
        if p["run_id"] == run_id and p.get("worker") in out:
            w = out[p["worker"]]
            w["task_peak_rss_mb"] = max(w.get("task_peak_rss_mb", 0), round(p["maxrss_kb"] / 1024))
    for name, mb in d.peak_rss_mb().items():
        if name.startswith("worker-") and name[7:] in out:
            out[name[7:]]["worker_process_peak_rss_mb"] = mb
    return out


def layout_vs_s5cmd(s3: S3Stack, catalog: Catalog, work: Path) -> dict:
    """The usable images of every manifest laid out from S3 with the code assemble runs (`layout.materialize`,
    16 threads), then `s5cmd cp` of the same data/ objects (256 workers, its default), one after the other, both
    straight to moto (not through the counting proxy). Objects/s of each and ours ÷ s5cmd."""
    from bench.s3_small import s5cmd
    from mgdata.layout import materialize

    exe = s5cmd()
    files, prefixes = [], []
    for name, source in catalog.sources.items():
        table = manifest.read_table(s3.store, manifest.source_key(name), columns=["path", "bytes", "status"])
        if table is not None:
            usable = manifest.usable(table)
            files += list(zip(usable["path"].to_pylist(), usable["bytes"].to_pylist(), strict=True))
        prefixes += source.layout
    ours_dir, s5_dir = work / "layout-ours", work / "layout-s5cmd"
    for folder in (ours_dir, s5_dir):
        shutil.rmtree(folder, ignore_errors=True)
    began = time.monotonic()
    outcome = materialize(s3.store, ours_dir, files, prefixes)
    ours = time.monotonic() - began
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": S3_LOGIN,
        "AWS_SECRET_ACCESS_KEY": s3.secret,
        "AWS_REGION": "us-east-1",
    }
    began = time.monotonic()
    cmd = [exe, "--endpoint-url", s3.direct, "cp", f"s3://{BUCKET}/{STORE_PREFIX}/data/*", f"{s5_dir}/"]
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    theirs = time.monotonic() - began
    copied = sum(len(names) for _, _, names in os.walk(s5_dir))
    result = {
        "objects": len(files),
        "ours_seconds": round(ours, 1),
        "ours_objects_per_s": round(len(files) / ours),
        "ours_downloaded": outcome.get("downloaded", 0),
        "s5cmd_seconds": round(theirs, 1),
        "s5cmd_objects": copied,
        "s5cmd_objects_per_s": round(copied / theirs),
        "s5cmd_exit": done.returncode,
        "ours_vs_s5cmd": round((len(files) / ours) / (copied / theirs), 2) if copied else None,
        "order": "ours, then s5cmd, once each, nothing else running in the deployment",
    }
    if done.returncode:
        result["s5cmd_error"] = done.stderr[-500:]
    for folder in (ours_dir, s5_dir):
        shutil.rmtree(folder, ignore_errors=True)
    return result


def check_store(d: Deployment) -> dict:
    """`python -m mgdata check --sizes-only` on the bucket and MGDATA_LAYOUT_DIR, with the deployment's settings
    (through the proxy; not inside any phase)."""
    began = time.monotonic()
    try:
        out, ok = d.run("mgdata-check", [sys.executable, "-m", "mgdata", "check", "--sizes-only"]), True
    except AssertionError as e:
        out, ok = str(e), False
    lines = [line for line in out.splitlines() if line.strip()]
    return {"clean": ok and any("the invariant holds" in line for line in lines), "seconds": round(time.monotonic() - began, 1),
            "output": lines[-40:]}  # fmt: skip


def open_multipart_uploads(s3: S3Stack) -> int:
    with contextlib.suppress(Exception):
        return len(s3.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []))
    return -1
