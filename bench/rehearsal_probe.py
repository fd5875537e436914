"""Airflow plugin the rehearsal loads beside the audit plugin: one JSON line per finished task instance.

A listener runs inside the task process, so it sees what the scheduler's records cannot: when the process was forked
(from /proc), when our task code began (`on_task_instance_running`) and ended (success, failure or a skip), the
process's peak RSS (`ru_maxrss`, pages shared with its supervisor included) and, on a Celery worker, the worker's
name (`MGDATA_WORKER_HOSTNAME`). Lines are appended to the file named by
`MGDATA_REHEARSAL_PROBE` with one `write` each (O_APPEND: lines of concurrent tasks never interleave).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

from airflow.listeners import hookimpl
from airflow.plugins_manager import AirflowPlugin

_began: dict[str, float] = {}


def _forked_at() -> float:
    """The epoch second this process was forked: its start in clock ticks since boot, plus the boot time."""
    with open("/proc/self/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as f:
        boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _record(task_instance, state: str) -> None:
    path = os.environ.get("MGDATA_REHEARSAL_PROBE")
    if not path:
        return
    key = str(getattr(task_instance, "id", ""))
    line = {
        "ti": key,
        "task_id": task_instance.task_id,
        "map_index": getattr(task_instance, "map_index", -1),
        "run_id": task_instance.run_id,
        "state": state,
        "forked": _forked_at(),
        "running": _began.pop(key, None),
        "done": time.time(),
        "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "worker": os.environ.get("MGDATA_WORKER_HOSTNAME"),
    }
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


@hookimpl
def on_task_instance_running(previous_state, task_instance) -> None:
    _began[str(getattr(task_instance, "id", ""))] = time.time()


@hookimpl
def on_task_instance_success(previous_state, task_instance) -> None:
    _record(task_instance, "success")


@hookimpl
def on_task_instance_failed(previous_state, task_instance, error) -> None:
    _record(task_instance, "failed")


@hookimpl
def on_task_instance_skipped(previous_state, task_instance) -> None:
    """A task that ended by skipping itself (an unchanged source's `plan`) ran our code too: without this, its
    code time counted as Airflow's."""
    _record(task_instance, "skipped")


class RehearsalProbe(AirflowPlugin):
    name = "mgdata_rehearsal_probe"
    listeners = [sys.modules[__name__]]
