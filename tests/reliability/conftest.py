"""The reliability suite's sample: the AI2D replica (40 images and its broken members) served on loopback."""

from __future__ import annotations

import pytest

from offline_mirror.build import build_mirror, write_catalog
from offline_mirror.server import MirrorServer


@pytest.fixture(scope="session")
def mirror(tmp_path_factory):
    """(server, catalog path, the replica's record); tests may set `server.rate_limit` and must reset it."""
    root = tmp_path_factory.mktemp("reliability-mirror")
    replicas = build_mirror(root, images_per_source=40, sources=["ai2d"])
    with MirrorServer(root) as srv:
        catalog = write_catalog(root, srv.base_url, replicas, shard_bytes=8 * 1024 * 1024)
        yield srv, str(catalog), replicas[0]


@pytest.fixture(params=["threads", "forked workers"])
def shard_workers(request, monkeypatch):
    """Run a test twice: its zip shards on threads, then on forked workers (`odd_sources.set_shard_workers`)."""
    from odd_sources import set_shard_workers

    set_shard_workers(monkeypatch, request.param == "forked workers")
    return request.param
