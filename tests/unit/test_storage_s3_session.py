"""The S3 store's single PUTs ride the botocore client's own HTTP session, found through a private botocore attribute;
these tests fail loudly the day a botocore upgrade moves it, instead of the store silently opening a pool of its own."""

from __future__ import annotations

from types import SimpleNamespace

from botocore.config import Config
from botocore.httpsession import URLLib3Session

from mgdata.storage import S3Store, s3_client
from mgdata.storage.s3 import client_http_session


def _client(**config):
    return s3_client(
        endpoint_url="http://127.0.0.1:9",
        region_name="us-east-1",
        aws_access_key_id="k",
        aws_secret_access_key="s",
        config=Config(**config) if config else None,
    )


def test_the_store_puts_over_the_clients_own_session_with_the_pinned_botocore():
    client = _client()
    store = S3Store("bucket", "", client)
    # `_endpoint.http_session` is botocore's; if this fails, botocore moved it: re-check client_http_session.
    assert store.http is client._endpoint.http_session
    assert isinstance(store.http, URLLib3Session)


def test_without_the_private_session_the_fallback_keeps_the_clients_public_settings():
    real = _client(
        connect_timeout=7, read_timeout=11, max_pool_connections=5, proxies={"http": "http://proxy:3128"}
    )
    moved = SimpleNamespace(meta=real.meta)  # a client whose private attribute is gone
    http = client_http_session(moved)
    assert isinstance(http, URLLib3Session) and http is not real._endpoint.http_session
    assert http._max_pool_connections == 5
    assert (http._timeout.connect_timeout, http._timeout.read_timeout) == (7, 11)
    assert http._proxy_config.proxy_url_for("http://bucket.example/key") == "http://proxy:3128"
