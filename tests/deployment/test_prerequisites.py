"""The deployment test's prerequisites come from `MGDATA_TEST_*` settings with documented defaults, and a missing one
fails with a message that names it and the settings to change (not an obscure error from deep inside the setup)."""

from __future__ import annotations

import contextlib
import socket
import uuid

import psycopg2
import pytest
from processes import MissingPrerequisite, Services


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_defaults_are_the_documented_ones():
    assert Services.from_env({}) == Services(
        pg_host="127.0.0.1",
        pg_port=5432,
        pg_user="postgres",
        pg_password="",
        redis_host="127.0.0.1",
        redis_port=6379,
        redis_db=11,
        redis_password="",
    )


def test_settings_override_the_defaults_and_reach_the_urls():
    s = Services.from_env(
        {
            "MGDATA_TEST_PG_HOST": "db.internal",
            "MGDATA_TEST_PG_PORT": "6543",
            "MGDATA_TEST_PG_USER": "ci",
            "MGDATA_TEST_PG_PASSWORD": "p@ss/word",
            "MGDATA_TEST_REDIS_HOST": "cache.internal",
            "MGDATA_TEST_REDIS_PORT": "6380",
            "MGDATA_TEST_REDIS_DB": "3",
            "MGDATA_TEST_REDIS_PASSWORD": "r:secret",
        }
    )
    assert s.database_url("d") == "postgresql+psycopg2://ci:p%40ss%2Fword@db.internal:6543/d"
    assert s.broker_url() == "redis://:r%3Asecret@cache.internal:6380/3"
    assert s.postgres()["password"] == "p@ss/word" and s.redis().connection_pool.connection_kwargs["db"] == 3
    assert Services().database_url("d") == "postgresql+psycopg2://postgres@127.0.0.1:5432/d"
    with pytest.raises(ValueError, match="MGDATA_TEST_PG_PORT='x' is not a int"):
        Services.from_env({"MGDATA_TEST_PG_PORT": "x"})


def test_the_machines_services_are_there():
    """What `make test` runs on: the defaults (or this machine's MGDATA_TEST_* settings) answer."""
    Services.from_env().check()


def test_unreachable_postgresql_is_named():
    port = closed_port()
    with pytest.raises(MissingPrerequisite) as e:
        Services(pg_port=port).check()
    message = str(e.value)
    assert f"PostgreSQL at 127.0.0.1:{port} as role 'postgres' is not reachable" in message
    assert "MGDATA_TEST_PG_PORT" in message and "Connection refused" in message


def test_a_role_that_may_not_create_databases_is_named():
    admin = Services.from_env()
    role = f"mgdata_nocreatedb_{uuid.uuid4().hex[:8]}"
    with contextlib.closing(psycopg2.connect(**admin.postgres())) as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE ROLE "{role}" LOGIN NOCREATEDB')
        try:
            with pytest.raises(MissingPrerequisite) as e:
                Services(pg_host=admin.pg_host, pg_port=admin.pg_port, pg_user=role).check()
            assert f"as role '{role}' may not create databases" in str(e.value)
            assert f"ALTER ROLE {role} CREATEDB" in str(e.value)
        finally:
            with conn.cursor() as cur:
                cur.execute(f'DROP ROLE "{role}"')


def test_unreachable_redis_is_named():
    port = closed_port()
    pg = Services.from_env()
    with pytest.raises(MissingPrerequisite) as e:
        Services(pg_host=pg.pg_host, pg_port=pg.pg_port, pg_user=pg.pg_user, pg_password=pg.pg_password,
                 redis_port=port).check()  # fmt: skip
    assert f"Redis at 127.0.0.1:{port} (DB 11) is not usable" in str(e.value)
    assert "MGDATA_TEST_REDIS_PORT" in str(e.value)
