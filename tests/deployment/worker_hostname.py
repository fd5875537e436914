"""`[core] hostname_callable` for the deployment test's Celery workers.

Airflow records `socket.getfqdn()` as a task instance's hostname, which is the same for two workers on one machine; in
docker compose every worker container has its own. The test points this callable at each worker's own name, so the
REST API shows which worker ran which task.
"""

from __future__ import annotations

import os


def hostname() -> str:
    return os.environ["MGDATA_WORKER_HOSTNAME"]
