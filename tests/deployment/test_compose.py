"""Static checks of docker-compose.yaml and Dockerfile (no Docker engine needed).

The compose file is parsed with ``yaml.safe_load`` (anchors and ``<<`` merges resolve), and
``${VAR:-default}`` is expanded the way ``docker compose`` does with an empty environment, so the
values checked here are the ones the containers would see on a fresh checkout.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shlex
from functools import cache
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml
from deployment_env import COMPONENTS, POOLS_FILE, Endpoints, airflow_environment
from processes import Deployment

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"

REQUIRED_SERVICES = {
    "postgres",
    "redis",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-init",
    "minio",
    "minio-init",
}
AIRFLOW_SERVICES = [
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-init",
]
# Long-running Airflow components: they must start only after airflow-init has migrated the DB.
AIRFLOW_DAEMONS = [s for s in AIRFLOW_SERVICES if s != "airflow-init"]
PROJECT_DIR = "/opt/airflow/project"
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"

# Keys allowed by the Compose specification (compose-spec/compose-spec schema/compose-spec.json), so a
# typo such as `healtcheck:` or `depends-on:` fails here instead of at `docker compose up`.
TOP_LEVEL_KEYS = {
    "version",
    "name",
    "include",
    "services",
    "models",
    "networks",
    "volumes",
    "secrets",
    "configs",
}
SERVICE_KEYS = set(
    """
    develop deploy annotations attach build blkio_config cap_add cap_drop cgroup cgroup_parent command configs
    container_name cpu_count cpu_percent cpu_shares cpu_quota cpu_period cpu_rt_period cpu_rt_runtime cpus
    cpuset credential_spec depends_on device_cgroup_rules devices dns dns_opt dns_search domainname entrypoint
    env_file label_file environment expose extends provider external_links extra_hosts gpus group_add
    healthcheck hostname image init ipc isolation labels links logging mac_address mem_limit mem_reservation
    mem_swappiness memswap_limit network_mode models networks oom_kill_disable oom_score_adj pid pids_limit
    platform ports post_start pre_stop privileged profiles pull_policy pull_refresh_after read_only restart
    runtime scale security_opt shm_size secrets sysctls stdin_open stop_grace_period stop_signal storage_opt
    tmpfs tty ulimits use_api_socket user uts userns_mode volumes volumes_from working_dir
    """.split()
)
HEALTHCHECK_KEYS = {"disable", "interval", "retries", "test", "timeout", "start_period", "start_interval"}
DEPENDS_ON_CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


# --------------------------------------------------------------------------------------------------
# helpers


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, as docker compose does (PyYAML keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


@cache
def load_compose() -> dict:
    with COMPOSE_FILE.open() as f:
        return yaml.load(f, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def service(name: str) -> dict:
    services = load_compose().get("services") or {}
    assert name in services, f"service {name!r} missing from {COMPOSE_FILE.name}"
    return services[name]


_VAR = re.compile(r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}")


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Expand ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}`` and ``$$`` like docker compose."""
    env = env or {}

    def repl(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("braced"), m.group("op"), m.group("arg")
        val = env.get(name)
        if op == ":-":
            return val if val else arg
        if op == "-":
            return arg if val is None else val
        if op in (":?", "?"):
            return val or ""
        if op in (":+", "+"):
            return arg if val else ""
        return val or ""

    return _VAR.sub(repl, value)


def env_of(name: str) -> dict[str, str]:
    """A service's environment as a dict (list form normalised), with compose defaults expanded."""
    env = service(name).get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: interpolate("" if v is None else str(v)) for k, v in env.items()}


def raw_env_of(name: str) -> dict[str, str]:
    """The environment as written in the file (no interpolation), to compare expressions."""
    env = service(name).get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def command_text(name: str, key: str = "command") -> str:
    """A service's command (or entrypoint) as one string, shell comment lines removed."""
    cmd = service(name).get(key) or ""
    if isinstance(cmd, list):
        cmd = "\n".join(str(part) for part in cmd)
    lines = [line for line in str(cmd).splitlines() if not line.lstrip().startswith("#")]
    return interpolate("\n".join(lines))


def depends_on(name: str) -> dict[str, dict]:
    deps = service(name).get("depends_on") or {}
    if isinstance(deps, list):  # short form means "service_started"
        deps = {d: {"condition": "service_started"} for d in deps}
    return deps


def volume_targets(name: str) -> dict[str, str]:
    """container path -> source for a service's short-syntax (or long-syntax) volumes."""
    mounts = {}
    for vol in service(name).get("volumes") or []:
        if isinstance(vol, dict):
            mounts[vol["target"]] = vol.get("source", "")
        else:
            source, target = interpolate(vol).split(":")[:2]
            mounts[target] = source
    return mounts


def container_to_host(name: str, container_path: str) -> Path | None:
    """Map a container path to the repo file a bind mount of service ``name`` exposes there."""
    path = PurePosixPath(container_path)
    for target, source in volume_targets(name).items():
        if source.startswith((".", "/")) and (
            path == PurePosixPath(target) or PurePosixPath(target) in path.parents
        ):
            return (ROOT / source / path.relative_to(target)).resolve()
    return None


def healthcheck_test(name: str) -> str:
    hc = service(name).get("healthcheck") or {}
    test = hc.get("test")
    if isinstance(test, list):
        assert test and test[0] not in ("NONE",), f"{name}: healthcheck disabled"
        test = " ".join(test[1:]) if test[0] in ("CMD", "CMD-SHELL") else " ".join(test)
    return test or ""


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    text = DOCKERFILE.read_text()
    text = re.sub(
        r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    )
    out = []
    for line in text.splitlines():
        if line.strip():
            instr, _, args = line.strip().partition(" ")
            out.append((instr.upper(), args.strip()))
    return out


def requirement_pin(package: str, path: Path = ROOT / "requirements.txt") -> str:
    for line in path.read_text().splitlines():
        m = re.match(rf"^{re.escape(package)}==(\S+)", line.strip(), re.IGNORECASE)
        if m:
            return m.group(1)
    raise AssertionError(f"{package}== not pinned in {path.name}")


def pip_installs() -> list[list[str]]:
    """Argument lists of every `pip install` in the Dockerfile's RUN instructions."""
    installs = []
    for instr, args in dockerfile_instructions():
        if instr != "RUN":
            continue
        for part in re.split(r"&&|;", args):
            tokens = shlex.split(part)
            for i in range(len(tokens) - 1):
                if tokens[i].endswith("pip") and tokens[i + 1] == "install":
                    installs.append(tokens[i + 2 :])
                    break
    return installs


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def pool_names(path: Path) -> set[str]:
    return set(json.loads(path.read_text()))


# --------------------------------------------------------------------------------------------------
# services


def test_compose_file_parses_with_safe_load():
    with COMPOSE_FILE.open() as f:
        assert yaml.safe_load(f) == load_compose()


def test_compose_keys_follow_the_compose_spec():
    compose = load_compose()
    assert not {k for k in compose if not k.startswith("x-")} - TOP_LEVEL_KEYS
    for name, svc in compose["services"].items():
        unknown = {k for k in svc if not k.startswith("x-")} - SERVICE_KEYS
        assert not unknown, f"{name}: unknown service keys {sorted(unknown)}"
        assert not set(svc.get("healthcheck") or {}) - HEALTHCHECK_KEYS, name
        for dep, spec in depends_on(name).items():
            assert dep in compose["services"], f"{name} depends on unknown service {dep!r}"
            assert spec.get("condition") in DEPENDS_ON_CONDITIONS, f"{name} -> {dep}: {spec}"
        env = svc.get("environment") or {}
        if isinstance(env, dict):
            for key, value in env.items():
                assert value is None or isinstance(value, str | int | float | bool), (
                    f"{name}: {key} is not a scalar"
                )


def test_required_services_exist():
    services = set(load_compose().get("services") or {})
    assert REQUIRED_SERVICES <= services, f"missing services: {sorted(REQUIRED_SERVICES - services)}"


def test_airflow_services_use_celery_postgres_and_redis():
    services = load_compose()["services"]
    for name in AIRFLOW_SERVICES:
        env = env_of(name)
        assert env.get("AIRFLOW__CORE__EXECUTOR") == "CeleryExecutor", name

        db = urlsplit(env.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", ""))
        assert db.scheme.startswith("postgresql"), f"{name}: metadata DB is not postgres: {db.geturl()!r}"
        assert db.hostname == "postgres" and "postgres" in services, name

        backend = urlsplit(env.get("AIRFLOW__CELERY__RESULT_BACKEND", ""))
        assert backend.scheme.startswith("db+postgresql") and backend.hostname == "postgres", name

        broker = urlsplit(env.get("AIRFLOW__CELERY__BROKER_URL", ""))
        assert broker.scheme == "redis" and broker.hostname == "redis" and "redis" in services, name
        assert (broker.port or 6379) == 6379, name

        execution_api = urlsplit(env.get("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", ""))
        assert execution_api.hostname == "airflow-apiserver", name
        assert execution_api.path.rstrip("/") == "/execution", name

        assert env.get("AIRFLOW__CORE__LOAD_EXAMPLES", "").lower() == "false", name


def test_airflow_services_share_secrets_and_mgdata_settings():
    shared_prefixes = ("MGDATA_", "AIRFLOW_CONN_", "AIRFLOW__API_AUTH__", "AIRFLOW__API__SECRET_KEY")
    reference = {k: v for k, v in raw_env_of("airflow-scheduler").items() if k.startswith(shared_prefixes)}
    for key in ("AIRFLOW__API_AUTH__JWT_SECRET", "MGDATA_STORAGE", "MGDATA_S3_CONN_ID"):
        assert reference.get(key), f"{key} is not set for the Airflow services"
    # The JWT secret is overridable but must never be empty.
    assert interpolate(reference["AIRFLOW__API_AUTH__JWT_SECRET"])
    for name in AIRFLOW_SERVICES:
        mine = {k: v for k, v in raw_env_of(name).items() if k.startswith(shared_prefixes)}
        assert mine == reference, (
            f"{name} differs from airflow-scheduler in {sorted(set(mine.items()) ^ set(reference.items()))}"
        )
    # MGDATA_LAYOUT_DIR is intentionally left unset (object storage only).
    assert "MGDATA_LAYOUT_DIR" not in reference


def published_api_port(env: dict[str, str] | None = None) -> str:
    """The host port the api-server is published on, with `env` as the .env file."""
    (mapping,) = service("airflow-apiserver")["ports"]
    host, container = interpolate(str(mapping), env).rsplit(":", 1)
    assert container == "8080", mapping
    return host


@pytest.mark.parametrize("port", [None, "9090"])
def test_api_base_url_follows_the_published_port(port):
    """Login redirects and links go where browsers reach the api-server, also when AIRFLOW_API_PORT moves it."""
    env = {"AIRFLOW_API_PORT": port} if port else {}
    assert published_api_port(env) == (port or "8080")
    for name in AIRFLOW_SERVICES:
        base = interpolate(raw_env_of(name)["AIRFLOW__API__BASE_URL"], env)
        assert base == f"http://localhost:{port or '8080'}", name


def test_default_jwt_secret_is_long_enough_not_to_warn():
    """Tokens are HS512 (Airflow's guess for a shared secret); PyJWT warns below 64 bytes."""
    import warnings

    import jwt

    secret = env_of("airflow-apiserver")["AIRFLOW__API_AUTH__JWT_SECRET"]
    assert len(secret.encode()) >= 64
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        token = jwt.encode({"sub": "admin"}, secret, algorithm="HS512")
        assert jwt.decode(token, secret, algorithms=["HS512"])["sub"] == "admin"
    with pytest.warns(jwt.warnings.InsecureKeyLengthWarning):  # the check is live: the old default warned
        jwt.encode({"sub": "admin"}, "change-me", algorithm="HS512")


def test_images_are_pinned_to_release_tags():
    """A fresh `docker compose up` next year runs what was tested: no floating `latest`."""
    images = {name: interpolate(str(svc["image"])) for name, svc in load_compose()["services"].items()}
    for name, image in images.items():
        if name.startswith("airflow-"):
            continue  # built from ./Dockerfile (apache/airflow pinned there)
        assert ":" in image and not image.endswith(":latest"), f"{name}: {image} is not pinned"
    for name in ("minio", "minio-init"):
        assert re.fullmatch(r"minio/(minio|mc):RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ", images[name]), (
            images[name]
        )


def test_no_schedule_unless_the_operator_sets_one():
    """Unpausing the DAG (the deployment docs do) must not start a full 250 GB run: MGDATA_SCHEDULE defaults to empty."""
    for name in AIRFLOW_SERVICES:
        assert env_of(name)["MGDATA_SCHEDULE"] == "", name
        assert interpolate(raw_env_of(name)["MGDATA_SCHEDULE"], {"MGDATA_SCHEDULE": "@weekly"}) == "@weekly"
    assert env_of("airflow-scheduler")["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"] == "true"


# --------------------------------------------------------------------------------------------------
# MinIO and the mgdata_s3 connection


def s3_connection() -> dict:
    env = env_of("airflow-worker")
    conn_id = env["MGDATA_S3_CONN_ID"]
    raw = env.get(f"AIRFLOW_CONN_{conn_id.upper()}")
    assert raw, f"AIRFLOW_CONN_{conn_id.upper()} not set"
    return json.loads(raw)


def test_s3_connection_is_json_pointing_at_minio():
    conn = s3_connection()
    assert conn["conn_type"] == "aws"
    extra = conn["extra"]
    endpoint = urlsplit(extra["endpoint_url"])
    assert endpoint.hostname == "minio" and "minio" in load_compose()["services"]
    minio_ports = {str(p).split(":")[-1] for p in service("minio").get("ports", [])}
    assert str(endpoint.port) in minio_ports | {"9000"}, (
        f"endpoint port {endpoint.port} is not MinIO's API port"
    )
    assert "9000" in minio_ports
    config = extra["config_kwargs"]
    assert config["request_checksum_calculation"] == "when_required"
    assert config["response_checksum_validation"] == "when_required"
    assert int(config["max_pool_connections"]) >= 16


def test_s3_connection_credentials_match_minio():
    conn = s3_connection()
    minio = env_of("minio")
    assert conn["login"] == minio["MINIO_ROOT_USER"]
    assert conn["password"] == minio["MINIO_ROOT_PASSWORD"]
    # Overriding the credentials in .env must change both sides together.
    override = {"MINIO_ROOT_USER": "u", "MINIO_ROOT_PASSWORD": "p"}
    conn_raw = raw_env_of("airflow-worker")[
        f"AIRFLOW_CONN_{env_of('airflow-worker')['MGDATA_S3_CONN_ID'].upper()}"
    ]
    overridden = json.loads(interpolate(conn_raw, override))
    assert (overridden["login"], overridden["password"]) == ("u", "p")
    minio_raw = raw_env_of("minio")
    assert interpolate(minio_raw["MINIO_ROOT_USER"], override) == "u"
    assert interpolate(minio_raw["MINIO_ROOT_PASSWORD"], override) == "p"


def test_conn_id_matches_connection_env_var():
    for name in AIRFLOW_SERVICES:
        env = env_of(name)
        conn_id = env.get("MGDATA_S3_CONN_ID")
        assert conn_id, name
        assert f"AIRFLOW_CONN_{conn_id.upper()}" in env, f"{name}: no connection env var for {conn_id!r}"


def test_storage_bucket_is_created_by_minio_init():
    storage = urlsplit(env_of("airflow-worker")["MGDATA_STORAGE"])
    assert storage.scheme == "s3"
    bucket = storage.netloc.rpartition("@")[2]  # s3://conn_id@bucket/... is also allowed
    assert bucket

    script = command_text("minio-init", "entrypoint") + "\n" + command_text("minio-init")
    created = set()
    for m in re.finditer(r"mc\s+mb\b([^&;\n]*)", script):
        created |= {tok.split("/", 1)[1] for tok in shlex.split(m.group(1)) if "/" in tok}
    assert bucket in created, (
        f"minio-init creates {sorted(created)}, not the MGDATA_STORAGE bucket {bucket!r}"
    )
    assert "--ignore-existing" in script, "bucket creation must be idempotent"
    assert depends_on("minio-init").get("minio", {}).get("condition") == "service_healthy"


# --------------------------------------------------------------------------------------------------
# airflow-init


def test_airflow_init_migrates_db_then_imports_pools():
    script = command_text("airflow-init")
    migrate = re.search(r"airflow\s+db\s+migrate\b", script)
    pools = re.search(r"airflow\s+pools\s+import\s+(\S+)", script)
    assert migrate, "airflow-init does not run `airflow db migrate`"
    assert pools, "airflow-init does not run `airflow pools import`"
    assert migrate.start() < pools.start(), "pools must be imported after the DB is migrated"

    container_path = pools.group(1).strip("'\"")
    host_path = container_to_host("airflow-init", container_path)
    assert host_path is not None, f"{container_path} is not bind-mounted from the repo into airflow-init"
    assert host_path.is_file(), f"{host_path} (mounted at {container_path}) does not exist"

    expected = pool_names(ROOT / "include" / "pools.json")
    assert expected, "include/pools.json defines no pools"
    assert expected <= pool_names(host_path)


def test_pools_file_is_importable():
    """Every entry has the keys `airflow pools import` requires (it fails the whole import otherwise)."""
    pools = json.loads((ROOT / "include" / "pools.json").read_text())
    for name, spec in pools.items():
        assert isinstance(spec, dict) and "slots" in spec and "description" in spec, name
        assert isinstance(spec["slots"], int) and spec["slots"] > 0, name


def test_airflow_init_waits_for_minio_bucket():
    assert (
        depends_on("airflow-init").get("minio-init", {}).get("condition") == "service_completed_successfully"
    )


def test_auth_uses_simple_auth_manager_with_preset_password():
    if not _installed("apache-airflow-providers-fab"):
        for name in AIRFLOW_SERVICES:
            manager = env_of(name).get("AIRFLOW__CORE__AUTH_MANAGER", SIMPLE_AUTH_MANAGER)
            assert manager == SIMPLE_AUTH_MANAGER, f"{name}: {manager} is not installed"
        # `_AIRFLOW_WWW_USER_CREATE` makes the image run `airflow users create`, a FAB-only command.
        assert "_AIRFLOW_WWW_USER_CREATE" not in env_of("airflow-init")

    env = env_of("airflow-apiserver")
    users = env.get("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", "")
    init_env = env_of("airflow-init")
    assert f"{init_env['_AIRFLOW_WWW_USER_USERNAME']}:admin" in users.split(",")
    assert init_env.get("_AIRFLOW_WWW_USER_PASSWORD")

    passwords_file = PurePosixPath(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    for name in ("airflow-apiserver", "airflow-init"):
        mounts = volume_targets(name)
        assert any(PurePosixPath(t) in passwords_file.parents for t in mounts), (
            f"{name}: {passwords_file} is not on a volume shared with airflow-init"
        )
    assert "SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" in command_text("airflow-init"), (
        "airflow-init does not write the SimpleAuthManager passwords file"
    )


# --------------------------------------------------------------------------------------------------
# image: mgdata importable, versions consistent


def test_include_is_mounted_and_installed():
    for name in AIRFLOW_SERVICES:
        mounts = volume_targets(name)
        assert Path(ROOT, mounts.get(f"{PROJECT_DIR}/include", "<none>")).resolve() == ROOT / "include", (
            f"{name}: ./include is not mounted at {PROJECT_DIR}/include"
        )
        assert mounts.get("/opt/airflow/dags", "").rstrip("/") == "./dags", name

    copies = [args for instr, args in dockerfile_instructions() if instr in ("COPY", "ADD")]
    copied = " ".join(copies)
    assert re.search(rf"\binclude/?\s+{PROJECT_DIR}/include/?", copied), "Dockerfile does not copy include/"
    assert re.search(rf"\bpyproject\.toml\b.*\s{PROJECT_DIR}/?(\s|$)", copied), "pyproject.toml not copied"
    editable = [args for args in pip_installs() if "-e" in args or "--editable" in args]
    assert any(PROJECT_DIR in {a.rstrip("/") for a in args} for args in editable), (
        f"Dockerfile does not `pip install -e {PROJECT_DIR}`"
    )
    assert 'package-dir = {"" = "include"}' in (ROOT / "pyproject.toml").read_text()


def test_dockerfile_airflow_version_matches_requirements():
    pinned = requirement_pin("apache-airflow")
    froms = [args for instr, args in dockerfile_instructions() if instr == "FROM"]
    assert froms, "Dockerfile has no FROM"
    image, _, tag = froms[0].split()[0].partition(":")
    assert image == "apache/airflow"
    assert tag.split("-")[0] == pinned, f"FROM tag {tag!r} != apache-airflow=={pinned}"

    envs = " ".join(args for instr, args in dockerfile_instructions() if instr in ("ENV", "ARG"))
    assert re.search(rf"\bAIRFLOW_VERSION[= ]{re.escape(pinned)}\b", envs), (
        "AIRFLOW_VERSION not set to the pin"
    )

    pins = {a.split("==", 1)[1] for args in pip_installs() for a in args if a.startswith("apache-airflow==")}
    assert pins == {pinned}, f"Dockerfile pins apache-airflow {pins}, requirements.txt {pinned}"
    assert requirement_pin("apache-airflow", ROOT / "constraints.txt") == pinned


def test_dockerfile_installs_requirements_with_constraints():
    installs = [args for args in pip_installs() if "-r" in args]
    assert installs, "Dockerfile does not `pip install -r requirements.txt`"
    for args in installs:
        req = args[args.index("-r") + 1]
        assert req.endswith("requirements.txt"), req
        assert "-c" in args or "--constraint" in args, "requirements installed without `-c constraints.txt`"
        flag = "-c" if "-c" in args else "--constraint"
        assert args[args.index(flag) + 1].endswith("constraints.txt")
        assert any(a.startswith("apache-airflow==") for a in args), (
            "apache-airflow must be pinned in the install"
        )
    copied = " ".join(args for instr, args in dockerfile_instructions() if instr in ("COPY", "ADD"))
    assert "constraints.txt" in copied and "requirements.txt" in copied


def test_every_install_compiles_bytecode():
    """Both installs leave compiled modules behind, so no process compiles Airflow from source on a machine that sets
    PYTHONDONTWRITEBYTECODE: the image's pip compiles unless told not to, uv only when asked."""
    for args in pip_installs():
        assert "--no-compile" not in args, (
            f"Dockerfile installs without bytecode: pip install {' '.join(args)}"
        )
    lock_install = [
        line.split()
        for line in (ROOT / "Makefile").read_text().splitlines()
        if "pip install" in line and "-r requirements-dev.txt" in line
    ]
    assert lock_install, "Makefile does not install requirements-dev.txt"
    for tokens in lock_install:
        assert "--compile-bytecode" in tokens, f"make venv installs without bytecode: {' '.join(tokens)}"


def test_dockerignore_keeps_venv_and_git_out():
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".git"} <= ignored
    assert not ignored & {"include", "requirements.txt", "constraints.txt", "pyproject.toml"}


# --------------------------------------------------------------------------------------------------
# health and start-up order


@pytest.mark.parametrize(
    ("name", "probe"),
    [
        ("postgres", "pg_isready"),
        ("redis", "redis-cli ping"),
        ("minio", "mc ready local"),
        ("airflow-apiserver", "http://localhost:8080/api/v2/monitor/health"),
        ("airflow-scheduler", "http://localhost:8974/health"),
    ],
)
def test_healthcheck(name, probe):
    assert probe in healthcheck_test(name), f"{name}: healthcheck should run {probe!r}"


def test_scheduler_health_server_enabled():
    assert env_of("airflow-scheduler").get("AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK", "").lower() == "true"


@pytest.mark.parametrize("name", AIRFLOW_DAEMONS)
def test_airflow_daemons_wait_for_init(name):
    deps = depends_on(name)
    assert deps.get("airflow-init", {}).get("condition") == "service_completed_successfully", name
    assert deps.get("postgres", {}).get("condition") == "service_healthy", name
    assert deps.get("redis", {}).get("condition") == "service_healthy", name


def test_worker_is_a_scalable_celery_worker():
    worker = service("airflow-worker")
    assert command_text("airflow-worker").split() == ["celery", "worker"]
    assert env_of("airflow-worker").get("DUMB_INIT_SETSID") == "0"
    assert "celery" in healthcheck_test("airflow-worker") and "inspect ping" in healthcheck_test(
        "airflow-worker"
    )
    # `--scale airflow-worker=N` needs no fixed container_name or host port.
    assert "container_name" not in worker and not worker.get("ports")
    assert "replicas" not in (worker.get("deploy") or {})
    assert depends_on("airflow-worker").get("airflow-apiserver", {}).get("condition") == "service_healthy"


def test_named_volumes_are_declared():
    declared = set(load_compose().get("volumes") or {})
    for name, svc in load_compose()["services"].items():
        for vol in svc.get("volumes") or []:
            source = vol.get("source", "") if isinstance(vol, dict) else vol.split(":")[0]
            if source and not source.startswith((".", "/", "$", "~")):
                assert source in declared, f"{name}: volume {source!r} not declared"


# --------------------------------------------------------------------------------------------------
# in step with the deployment test: both read deployment_env


def compose_endpoints() -> Endpoints:
    """The endpoints and secrets compose gives its containers, in the shape the deployment test fills in."""
    env, pg, minio = env_of("airflow-scheduler"), env_of("postgres"), env_of("minio")
    api_port = {str(p).split(":")[-1] for p in service("airflow-apiserver").get("ports", [])}
    assert api_port == {"8080"}, api_port
    return Endpoints(
        database=f"postgresql+psycopg2://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@postgres/{pg['POSTGRES_DB']}",
        broker="redis://:@redis:6379/0",
        execution_api="http://airflow-apiserver:8080/execution/",
        api_base_url=f"http://localhost:{published_api_port()}",
        s3_endpoint="http://minio:9000",
        s3_login=minio["MINIO_ROOT_USER"],
        s3_password=minio["MINIO_ROOT_PASSWORD"],
        jwt_secret=env["AIRFLOW__API_AUTH__JWT_SECRET"],
        api_secret_key=env["AIRFLOW__API__SECRET_KEY"],
        fernet_key=env["AIRFLOW__CORE__FERNET_KEY"],
        admin_user=env_of("airflow-init")["_AIRFLOW_WWW_USER_USERNAME"],
        passwords_file=env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"],
    )


def _comparable(env: dict[str, str]) -> dict[str, object]:
    """Connection JSON compared as data, not text (key order and spacing do not matter)."""
    return {k: json.loads(v) if k.startswith("AIRFLOW_CONN_") else v for k, v in env.items()}


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_compose_settings_are_the_deployment_tests(name):
    """Every Airflow setting compose sets is one the deployment test runs with, and the other way round."""
    expected = _comparable(airflow_environment(compose_endpoints()))
    env = env_of(name)
    ours = {k: v for k, v in env.items() if k.startswith(("AIRFLOW__", "AIRFLOW_CONN_", "MGDATA_"))}
    ours = _comparable(ours)
    differ = sorted(k for k in set(ours) | set(expected) if ours.get(k) != expected.get(k))
    assert not differ, f"{name} differs from deployment_env.airflow_environment in {differ}"


def test_deployment_test_runs_the_shared_settings(tmp_path):
    """The local deployment adds paths, ports and short intervals, but overrides none of the shared settings."""
    d = Deployment(
        tmp_path,
        catalog=tmp_path / "catalog.yaml",
        s3_endpoint="http://127.0.0.1:1",
        s3_login="a",
        s3_password="b",
    )
    shared = airflow_environment(d.endpoints)
    env = d.environment()
    assert {k: env[k] for k in shared} == shared
    assert urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).scheme == "postgresql+psycopg2"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://")
    assert urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]).scheme == "redis"


@pytest.mark.parametrize(("name", "args"), COMPONENTS.items())
def test_compose_runs_the_deployment_tests_components(name, args):
    assert command_text(name).split() == args


def test_compose_imports_the_deployment_tests_pools():
    script = command_text("airflow-init")
    container_path = re.search(r"airflow\s+pools\s+import\s+(\S+)", script).group(1).strip("'\"")
    assert container_to_host("airflow-init", container_path) == (ROOT / POOLS_FILE).resolve()
