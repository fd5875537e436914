"""Run the production deployment on this machine, without Docker: real processes, real services, clean teardown.

`Services` says where PostgreSQL and Redis are (`MGDATA_TEST_*` settings) and checks them, naming what is missing.
`Deployment` creates a throwaway PostgreSQL database (metadata DB and Celery result backend), migrates it, imports the
pools, writes the SimpleAuthManager passwords, then starts `airflow api-server`, `scheduler`, `dag-processor`,
`triggerer` and Celery workers with the settings of `deployment_env` (the ones docker-compose.yaml uses), the broker
on the local Redis under a key prefix of its own. Each process runs in its own process group with its log in the work
directory; `stop()` ends the groups, then any straggler that carries this deployment's marker in its environment,
drops the database and deletes the Redis keys. `api()` is a REST client authenticated the way a user's script is: a
JWT from the api-server's `/auth/token`.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import psycopg2
import redis
import requests
from cryptography.fernet import Fernet
from deployment_env import COMPONENTS, POOLS_FILE, Endpoints, airflow_environment

ROOT = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
MARKER = "MGDATA_DEPLOYMENT_ID"  # in every started process's environment, to find stragglers at teardown
ADMIN = "admin"
DAG = "mgllava_data"


@dataclass(frozen=True)
class Services:
    """The PostgreSQL and Redis the deployment test runs on, from `MGDATA_TEST_*` settings (defaults: a local
    PostgreSQL whose role `postgres` needs no password and may create databases, a local Redis without password)."""

    pg_host: str = "127.0.0.1"
    pg_port: int = 5432
    pg_user: str = "postgres"
    pg_password: str = ""
    redis_host: str = "127.0.0.1"
    redis_port: int = 6379
    redis_db: int = 11
    redis_password: str = ""

    SETTINGS = {
        "pg_host": "MGDATA_TEST_PG_HOST",
        "pg_port": "MGDATA_TEST_PG_PORT",
        "pg_user": "MGDATA_TEST_PG_USER",
        "pg_password": "MGDATA_TEST_PG_PASSWORD",
        "redis_host": "MGDATA_TEST_REDIS_HOST",
        "redis_port": "MGDATA_TEST_REDIS_PORT",
        "redis_db": "MGDATA_TEST_REDIS_DB",
        "redis_password": "MGDATA_TEST_REDIS_PASSWORD",
    }

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Services:
        environ = os.environ if environ is None else environ
        values = {}
        for name, setting in cls.SETTINGS.items():
            if setting in environ:
                kind = type(getattr(cls, name))
                try:
                    values[name] = kind(environ[setting])
                except ValueError:
                    raise ValueError(f"{setting}={environ[setting]!r} is not a {kind.__name__}") from None
        return cls(**values)

    def postgres(self, dbname: str = "postgres") -> dict:
        """psycopg2.connect() arguments."""
        return {
            "host": self.pg_host,
            "port": self.pg_port,
            "user": self.pg_user,
            "password": self.pg_password or None,
            "dbname": dbname,
            "connect_timeout": 10,
        }

    def database_url(self, dbname: str) -> str:
        auth = quote(self.pg_user, safe="") + (
            f":{quote(self.pg_password, safe='')}" if self.pg_password else ""
        )
        return f"postgresql+psycopg2://{auth}@{self.pg_host}:{self.pg_port}/{dbname}"

    def redis(self) -> redis.Redis:
        return redis.Redis(
            host=self.redis_host,
            port=self.redis_port,
            db=self.redis_db,
            password=self.redis_password or None,
            socket_timeout=10,
        )

    def broker_url(self) -> str:
        auth = f":{quote(self.redis_password, safe='')}@" if self.redis_password else ""
        return f"redis://{auth}{self.redis_host}:{self.redis_port}/{self.redis_db}"

    def check(self) -> None:
        """Raise `MissingPrerequisite` naming what is missing and the settings that point at it."""
        pg = f"PostgreSQL at {self.pg_host}:{self.pg_port} as role {self.pg_user!r}"
        pg_settings = "MGDATA_TEST_PG_HOST, MGDATA_TEST_PG_PORT, MGDATA_TEST_PG_USER, MGDATA_TEST_PG_PASSWORD"
        try:
            with contextlib.closing(psycopg2.connect(**self.postgres())) as conn, conn.cursor() as cur:
                cur.execute("SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user")
                row = cur.fetchone()
        except psycopg2.Error as e:
            reason = (
                " ".join(line.strip() for line in str(e).splitlines() if line.strip()) or type(e).__name__
            )
            raise MissingPrerequisite(f"{pg} is not reachable ({reason}); set {pg_settings}") from None
        if not row or not row[0]:
            raise MissingPrerequisite(
                f"{pg} may not create databases (the test creates and drops a throwaway one): "
                f"ALTER ROLE {self.pg_user} CREATEDB, or set {pg_settings}"
            )
        where = f"Redis at {self.redis_host}:{self.redis_port} (DB {self.redis_db})"
        client = self.redis()
        try:
            client.ping()
        except redis.RedisError as e:
            raise MissingPrerequisite(
                f"{where} is not usable ({e}); set MGDATA_TEST_REDIS_HOST, MGDATA_TEST_REDIS_PORT, "
                "MGDATA_TEST_REDIS_DB, MGDATA_TEST_REDIS_PASSWORD"
            ) from None
        finally:
            client.close()


class MissingPrerequisite(RuntimeError):
    """A service the deployment test needs is not there; the message says which and how to point at another."""


def _celery_ready(log: Path, name: str) -> bool:
    """Celery logs "<node name> ready." once the worker consumes from the broker."""
    return re.search(rf"\b{re.escape(name)}@\S+ ready\.", log.read_text(errors="replace")) is not None


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of process `pid` so far (not its children's); None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Component:
    name: str
    popen: subprocess.Popen
    log: Path


class Deployment:
    """Airflow with CeleryExecutor on the local PostgreSQL and Redis, storing into S3 at `s3_endpoint`."""

    def __init__(
        self,
        workdir: Path,
        *,
        catalog: Path,
        s3_endpoint: str,
        s3_login: str,
        s3_password: str,
        workers: tuple[str, ...] = ("w1", "w2"),
        concurrency: int = 2,
        services: Services | None = None,
        triggerer: bool = True,
        extra_env: dict[str, str] | None = None,
    ):
        self.services = services or Services.from_env()
        self.id = uuid.uuid4().hex[:12]
        self.workdir = workdir
        self.home = workdir / "airflow"
        self.logs = workdir / "logs"
        self.workers = workers
        self.concurrency = concurrency
        self.triggerer = triggerer
        self.extra_env = dict(extra_env or {})  # on top of everything else (a bench's settings)
        self.database = f"mgdata_deploy_{self.id}"
        self.key_prefix = f"mgdata-deploy-{self.id}:"
        self.api_port = free_port()
        self.health_port = free_port()
        self.admin_password = secrets.token_urlsafe(16)
        self.endpoints = Endpoints(
            database=self.services.database_url(self.database),
            broker=self.services.broker_url(),
            execution_api=f"http://127.0.0.1:{self.api_port}/execution/",
            api_base_url=f"http://127.0.0.1:{self.api_port}",
            s3_endpoint=s3_endpoint,
            s3_login=s3_login,
            s3_password=s3_password,
            jwt_secret=secrets.token_urlsafe(64),  # HS512 wants 64 bytes or more
            api_secret_key=secrets.token_urlsafe(32),
            fernet_key=Fernet.generate_key().decode(),
            admin_user=ADMIN,
            passwords_file=str(self.home / "auth" / "simple_auth_manager_passwords.json"),
        )
        self.catalog = catalog
        self.components: list[Component] = []
        self._session: requests.Session | None = None
        self._database_created = False

    # -- environment ---------------------------------------------------------------------------------------------

    def environment(self) -> dict[str, str]:
        """The shared deployment settings plus what only a one-machine test needs (paths, ports, short intervals)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MGDATA_", "AIRFLOW"))}
        env.update(airflow_environment(self.endpoints))
        env.update(
            {
                MARKER: self.id,
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.home / "logs"),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.api_port),
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": "127.0.0.1",
                "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(self.health_port),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "1",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                # Redis is shared with whatever else runs here: every Celery key gets this deployment's prefix.
                "AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__GLOBAL_KEYPREFIX": self.key_prefix,
                "MGDATA_CATALOG": str(self.catalog),
                "MGDATA_RETRY_DELAY_SECONDS": "0",
                "PYTHONUNBUFFERED": "1",
                **self.extra_env,
            }
        )
        return env

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def setup(self) -> None:
        """Database, schema, pools and the admin's password: what `airflow-init` does in compose."""
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.home / "auth").mkdir(parents=True, exist_ok=True)
        with contextlib.closing(psycopg2.connect(**self.services.postgres())) as conn:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{self.database}"')
        self._database_created = True
        self.run("migrate", [AIRFLOW, "db", "migrate"])
        self.run("pools", [AIRFLOW, "pools", "import", str(ROOT / POOLS_FILE)])
        Path(self.endpoints.passwords_file).write_text(f'{{"{ADMIN}": "{self.admin_password}"}}\n')

    def start(self, timeout: float = 300) -> None:
        self._spawn("api-server", COMPONENTS["airflow-apiserver"])
        self._spawn("scheduler", COMPONENTS["airflow-scheduler"])
        self._spawn("dag-processor", COMPONENTS["airflow-dag-processor"])
        if self.triggerer:
            self._spawn("triggerer", COMPONENTS["airflow-triggerer"])
        for name in self.workers:
            self._spawn_worker(name)
        deadline = time.monotonic() + timeout
        self._wait(deadline, "api-server", lambda: self._get_ok(f"{self.base_url}/api/v2/monitor/health"))
        self._wait(deadline, "scheduler", lambda: self._get_ok(f"http://127.0.0.1:{self.health_port}/health"))
        for name in self.workers:
            self._wait_worker(deadline, name)

    def kill_worker(self, name: str) -> list[int]:
        """SIGKILL Celery worker `name` at once, with every process it started (its pool and the task processes):
        a machine or container lost mid-task. Its log is kept as `worker-<name>.killed.log`. Returns the pids."""
        return self.kill(f"worker-{name}", also=self._processes_of_worker(name))

    def kill(self, component: str, also: list[int] = ()) -> list[int]:
        """SIGKILL `component` (e.g. "scheduler") with its process group and the pids `also`; its log is kept as
        `<component>.killed.log` (a later kill of the same one appends). Returns the pids."""
        (victim,) = [c for c in self.components if c.name == component]
        self.components.remove(victim)  # first: `check_alive` must not see it die
        pids = sorted(set(also) | {victim.popen.pid})
        with contextlib.suppress(ProcessLookupError):
            os.killpg(victim.popen.pid, signal.SIGKILL)
        for pid in pids:  # any that left the group
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        victim.popen.wait()
        killed = victim.log.with_suffix(".killed.log")
        with killed.open("a") as out:
            out.write(victim.log.read_text(errors="replace"))
        victim.log.unlink()
        return pids

    def restart_scheduler(self, timeout: float = 120) -> None:
        """Start the scheduler again (after `kill("scheduler")`) and wait for its health check."""
        self._spawn("scheduler", COMPONENTS["airflow-scheduler"])
        deadline = time.monotonic() + timeout
        self._wait(deadline, "scheduler", lambda: self._get_ok(f"http://127.0.0.1:{self.health_port}/health"))

    def start_worker(self, name: str, timeout: float = 120) -> None:
        """Start worker `name` again (after `kill_worker`) and wait until it consumes from the broker."""
        self._spawn_worker(name)
        self._wait_worker(time.monotonic() + timeout, name)

    def _spawn_worker(self, name: str) -> None:
        self._spawn(
            f"worker-{name}",
            [*COMPONENTS["airflow-worker"], "--celery-hostname", f"{name}@%h"]
            + ["--concurrency", str(self.concurrency)],
            # Two workers on one machine: each serves its logs on its own port and names itself.
            AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
            AIRFLOW__CORE__HOSTNAME_CALLABLE="worker_hostname.hostname",
            MGDATA_WORKER_HOSTNAME=name,
            PYTHONPATH=str(Path(__file__).parent),
        )

    def _wait_worker(self, deadline: float, name: str) -> None:
        log = self.logs / f"worker-{name}.log"
        self._wait(deadline, f"worker {name}", lambda: _celery_ready(log, name))

    def _processes_of_worker(self, name: str) -> list[int]:
        return self._processes_with(f"{MARKER}={self.id}".encode(), f"MGDATA_WORKER_HOSTNAME={name}".encode())

    def stop(self) -> None:
        """End every process this deployment started, then drop its database and its Redis keys."""
        for c in self.components:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(c.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for c in self.components:
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.popen.wait(max(0.1, deadline - time.monotonic()))
        for c in self.components:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(c.popen.pid, signal.SIGKILL)
            c.popen.wait()
        for pid in self.stragglers():  # children that left their group (setsid) still carry the marker
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._database_created:
            with contextlib.closing(psycopg2.connect(**self.services.postgres())) as conn:
                conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            self._database_created = False
        client = self.services.redis()
        keys = list(client.scan_iter(match=f"{self.key_prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()

    def stragglers(self) -> list[int]:
        """Live processes whose environment carries this deployment's marker."""
        return self._processes_with(f"{MARKER}={self.id}".encode())

    @staticmethod
    def _processes_with(*variables: bytes) -> list[int]:
        """Live processes (not this one) whose environment holds every one of `variables` (b"NAME=value")."""
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                environ = set((proc / "environ").read_bytes().split(b"\0"))
                if environ.issuperset(variables):
                    found.append(int(proc.name))
        return found

    def redis_keys(self) -> list[bytes]:
        client = self.services.redis()
        try:
            return list(client.scan_iter(match=f"{self.key_prefix}*", count=1000))
        finally:
            client.close()

    def database_exists(self) -> bool:
        with contextlib.closing(psycopg2.connect(**self.services.postgres())) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,))
            return cur.fetchone() is not None

    def sql(self, query: str, *args) -> list[tuple]:
        """Rows of a query on the metadata database (task-instance records a REST page would take many calls for)."""
        with contextlib.closing(psycopg2.connect(**self.services.postgres(self.database))) as conn:
            with conn.cursor() as cur:
                cur.execute(query, args)
                return cur.fetchall()

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time of each component's own process (not its children: those are the task processes)."""
        out = {}
        for c in self.components:
            if (seconds := process_cpu_seconds(c.popen.pid)) is not None:
                out[c.name] = round(seconds, 1)
        return out

    def peak_rss_mb(self) -> dict[str, int]:
        """Peak RSS (VmHWM) of each component's own process, in MB."""
        out = {}
        for c in self.components:
            with contextlib.suppress(OSError, StopIteration):
                status = Path(f"/proc/{c.popen.pid}/status").read_text().splitlines()
                kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
                out[c.name] = round(kb / 1024)
        return out

    def tails(self, lines: int = 40) -> str:
        """The last lines of every process log, for a failure message."""
        out = []
        for log in sorted(self.logs.glob("*.log")):
            text = log.read_text(errors="replace").splitlines()
            out.append(f"===== {log.name} (last {lines} lines) =====\n" + "\n".join(text[-lines:]))
        return "\n".join(out)

    def check_alive(self) -> None:
        dead = [
            f"{c.name} (exit {c.popen.returncode})" for c in self.components if c.popen.poll() is not None
        ]
        if dead:
            raise AssertionError(f"deployment process(es) exited: {', '.join(dead)}")

    # -- REST API ------------------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def api(self, method: str, path: str, **kwargs) -> dict:
        """Call /api/v2 with a JWT from /auth/token, as a user's script does; raise on any error status."""
        if self._session is None:
            token = requests.post(
                f"{self.base_url}/auth/token",
                json={"username": ADMIN, "password": self.admin_password},
                timeout=30,
            )
            token.raise_for_status()
            self._session = requests.Session()
            self._session.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        response = self._session.request(
            method, f"{self.base_url}/api/v2/{path.lstrip('/')}", timeout=60, **kwargs
        )
        if response.status_code >= 400:
            raise AssertionError(f"{method} /api/v2/{path}: {response.status_code} {response.text[:2000]}")
        return response.json() if response.content else {}

    def get(self, path: str) -> requests.Response:
        """GET a path of the api-server (a plugin page) with the same JWT as the REST calls."""
        self.api("GET", "monitor/health")  # makes sure the session holds a token
        return self._session.get(f"{self.base_url}{path}", timeout=120)

    # -- internals -----------------------------------------------------------------------------------------------

    def run(self, name: str, cmd: list[str]) -> str:
        """Run `cmd` to its end with the deployment's environment (a CLI beside the components); its output, or
        AssertionError with it when it fails."""
        log = self.logs / f"{name}.log"
        with log.open("w") as out:
            done = subprocess.run(
                cmd,
                env=self.environment(),
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=600,
                cwd=self.workdir,
            )
        if done.returncode:
            raise AssertionError(f"{' '.join(cmd[1:])} failed:\n{log.read_text()[-4000:]}")
        return log.read_text()

    def _spawn(self, name: str, args: list[str], **extra_env: str) -> None:
        log = self.logs / f"{name}.log"
        env = self.environment() | extra_env
        with log.open("w") as out:
            popen = subprocess.Popen(
                [AIRFLOW, *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                start_new_session=True,  # its own process group: stop() ends it with all its children
            )
        self.components.append(Component(name, popen, log))

    def _wait(self, deadline: float, what: str, ready) -> None:
        while time.monotonic() < deadline:
            self.check_alive()
            with contextlib.suppress(OSError, requests.RequestException):
                if ready():
                    return
            time.sleep(1)
        raise AssertionError(f"{what} not ready in time")

    @staticmethod
    def _get_ok(url: str) -> bool:
        return requests.get(url, timeout=5).status_code == 200


# -- the DAG through the REST API, as a user's script drives it ------------------------------------------------


def wait_for_dag(d: Deployment, timeout: float = 180) -> None:
    """The dag-processor has parsed and serialized the DAG (else fail with its import errors)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d.check_alive()
        if any(dag["dag_id"] == DAG for dag in d.api("GET", "dags", params={"dag_id_pattern": DAG})["dags"]):
            return
        time.sleep(2)
    raise AssertionError(f"{DAG} not parsed: {d.api('GET', 'importErrors')}")


def trigger(d: Deployment, run_id: str, conf: dict) -> str:
    run = d.api(
        "POST", f"dags/{DAG}/dagRuns", json={"dag_run_id": run_id, "logical_date": None, "conf": conf}
    )
    return run["dag_run_id"]


def wait_for_run(d: Deployment, run_id: str, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d.check_alive()
        state = d.api("GET", f"dags/{DAG}/dagRuns/{run_id}")["state"]
        if state in ("success", "failed"):
            return state
        time.sleep(2)
    raise AssertionError(f"run {run_id} not finished in {timeout} s: {summarize(task_instances(d, run_id))}")


def task_instances(d: Deployment, run_id: str) -> list[dict]:
    """Every task instance of a run, mapped ones included (the API pages by 100)."""
    out: list[dict] = []
    while True:
        page = d.api(
            "GET", f"dags/{DAG}/dagRuns/{run_id}/taskInstances", params={"limit": 100, "offset": len(out)}
        )
        out += page["task_instances"]
        if not page["task_instances"] or len(out) >= page["total_entries"]:
            return out


def summarize(instances: list[dict]) -> str:
    return ", ".join(
        f"{ti['task_id']}[{ti['map_index']}]={ti['state']}" for ti in instances if ti["state"] != "skipped"
    )
