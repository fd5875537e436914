"""The production deployment's settings, defined once.

Two readers: `processes.py` starts the real components on this machine with them (the deployment test), and
`test_compose.py` checks that docker-compose.yaml gives its containers exactly the same settings. Only the endpoints
differ between the two (container names in compose, loopback ports and a throwaway database here), so they are the
parameters of `airflow_environment`; everything else is a constant of this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

# compose service -> the `airflow` sub-command it runs. The deployment test starts one of each, and two workers.
COMPONENTS: dict[str, list[str]] = {
    "airflow-apiserver": ["api-server"],
    "airflow-scheduler": ["scheduler"],
    "airflow-dag-processor": ["dag-processor"],
    "airflow-triggerer": ["triggerer"],
    "airflow-worker": ["celery", "worker"],
}
POOLS_FILE = "include/pools.json"  # imported after `airflow db migrate`, relative to the repository root
S3_CONN_ID = "mgdata_s3"
BUCKET = "mgdata"
STORAGE = f"s3://{BUCKET}/store"
ADMIN_ROLE = "admin"
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
# botocore >= 1.36 adds CRC checksums to every request unless told "when_required", which some S3-compatible stores
# reject; uploads run many threads, so the pool is larger than botocore's 10.
S3_CLIENT_CONFIG = {
    "max_pool_connections": 64,
    "request_checksum_calculation": "when_required",
    "response_checksum_validation": "when_required",
}


@dataclass(frozen=True)
class Endpoints:
    """Where the services are and the secrets they share: what differs between compose and the local test."""

    database: str  # SQLAlchemy URL of the metadata database (PostgreSQL)
    broker: str  # Redis URL of the Celery broker
    execution_api: str  # the api-server's Execution API, which workers call (ends in /execution/)
    api_base_url: str  # where browsers reach the api-server ([api] base_url: login redirects, links)
    s3_endpoint: str  # S3 API of MinIO (compose) or moto (test)
    s3_login: str
    s3_password: str
    jwt_secret: str
    api_secret_key: str
    fernet_key: str
    admin_user: str
    passwords_file: str  # SimpleAuthManager's passwords, written before the api-server starts


def s3_connection(endpoints: Endpoints) -> dict:
    """The Airflow AWS connection `MGDATA_S3_CONN_ID` names; the endpoint goes in the extra for MinIO and moto."""
    return {
        "conn_type": "aws",
        "login": endpoints.s3_login,
        "password": endpoints.s3_password,
        "extra": {
            "endpoint_url": endpoints.s3_endpoint,
            "region_name": "us-east-1",
            "config_kwargs": dict(S3_CLIENT_CONFIG),
        },
    }


def airflow_environment(endpoints: Endpoints) -> dict[str, str]:
    """The environment every Airflow component gets (api-server, scheduler, dag-processor, triggerer, workers)."""
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": endpoints.database,
        # Celery task states live in the metadata database, so Redis only carries the queue.
        "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + endpoints.database.replace("+psycopg2", "", 1),
        "AIRFLOW__CELERY__BROKER_URL": endpoints.broker,
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "true",
        # Workers (task SDK) talk to the api-server, not to the database.
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": endpoints.execution_api,
        # Every component must share these, otherwise tokens and log requests are rejected.
        "AIRFLOW__API_AUTH__JWT_SECRET": endpoints.jwt_secret,
        "AIRFLOW__API__SECRET_KEY": endpoints.api_secret_key,
        "AIRFLOW__CORE__FERNET_KEY": endpoints.fernet_key,
        "AIRFLOW__API__BASE_URL": endpoints.api_base_url,
        "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "true",
        # A task whose worker died stops heartbeating (every 5 s): after 30 s (default 300) the scheduler fails that
        # try and the task's own retries run it again on a live worker.
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
        # A scheduler that died leaves the task instances it had queued to whichever scheduler runs next: that one
        # adopts them (or resets them to be scheduled again) once the dead one's heartbeat is older than
        # scheduler_health_check_threshold (30 s), checking every 60 s (default 300).
        "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "60",
        "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{endpoints.admin_user}:{ADMIN_ROLE}",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": endpoints.passwords_file,
        "MGDATA_STORAGE": STORAGE,
        "MGDATA_S3_CONN_ID": S3_CONN_ID,
        # Manual runs only: a schedule would start a full refresh of every source as soon as the DAG is unpaused.
        "MGDATA_SCHEDULE": "",
        f"AIRFLOW_CONN_{S3_CONN_ID.upper()}": json.dumps(s3_connection(endpoints)),
    }
