"""Shared fixtures. Airflow's environment is set before anything imports Airflow."""

from __future__ import annotations

import os
import tempfile

_home = tempfile.mkdtemp(prefix="mgdata-airflow-")
os.environ.setdefault("AIRFLOW_HOME", _home)
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
_repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = os.path.join(_repo, "dags")
# Airflow reads the plugins folder once, when airflow.settings is first imported: set it before any test imports Airflow,
# so the audit plugin is found whichever test happens to import Airflow first.
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = os.path.join(_repo, "plugins")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def moto_endpoint():
    """A real S3 endpoint on loopback (moto's server), shared by the session; tests use their own buckets."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
