"""The huggingface adapter: a file of a Hub repo (model or dataset) at a pinned revision, streamed into the store.

Metadata comes from the Hub through huggingface_hub, the bytes through our own `fetch_to_store`:

1. `resolve`: a HEAD of the file's resolve URL (`get_hf_file_metadata`) gives the full commit the catalog's revision
   points at (a short hash or a branch in the catalog becomes a 40-hex commit), then `paths-info` at that commit gives
   the size and the LFS sha256.
2. `fetch`: a GET of the resolve URL *at that commit* streams straight into `store.new_writer(key)` (Range resume,
   retries, 429s answered as the server's `Retry-After`/`RateLimit` headers say), and the object is published only
   when its size and sha256 match the Hub's. No local file is ever written, whatever the store: on S3 the bytes go
   up as multipart parts from memory.

The token (`mgdata.settings.hf_token`: an Airflow connection, else `HF_TOKEN`) travels only in the Authorization
header; it is never part of a URL, a log line or an error. The endpoint is the mirror's `endpoint`, else
`HF_ENDPOINT` read at call time (huggingface_hub reads it once at import), else https://huggingface.co.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TypeVar

from huggingface_hub import HfApi, get_hf_file_metadata, hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from mgdata.catalog import Mirror
from mgdata.fetch.http import fetch_to_store
from mgdata.fetch.transfer import (
    ChecksumMismatch,
    FetchError,
    FetchResult,
    RemoteInfo,
    fetch_error,
    retry_after_seconds,
)
from mgdata.redact import redact_text
from mgdata.settings import hf_token
from mgdata.storage import Store

DEFAULT_ENDPOINT = "https://huggingface.co"
API_ATTEMPTS = 6
# The Hub's rate-limit windows are 5 minutes; a 429 may ask for up to that, and waiting is the only way through.
MAX_WAIT = 330.0

log = logging.getLogger("mgdata.fetch.huggingface")
T = TypeVar("T")


@dataclass(frozen=True)
class HubFile:
    """One file of a repo at one commit, as the Hub describes it."""

    repo: str
    repo_type: str
    path: str
    commit: str  # the full commit hash the mirror's revision resolved to
    size: int
    sha256: str | None  # the LFS oid; None for a file stored in git itself (then only its size is checked)
    blob_id: str | None
    url: str  # the resolve URL at `commit`

    @property
    def version(self) -> str:
        """What identifies the bytes: the LFS sha256, else the git blob id."""
        return self.sha256 or self.blob_id or self.commit


def endpoint(mirror: Mirror) -> str:
    return (mirror.endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


def _call(what: str, fn: Callable[[], T], *, sleep: Callable[[float], None] = time.sleep) -> T:
    """Call the Hub API, waiting out 429s as the `RateLimit`/`Retry-After` headers say and retrying 5xx.

    huggingface_hub retries its HEAD requests itself but not its API calls (tree, paths-info, revision)."""
    for attempt in range(1, API_ATTEMPTS + 1):
        try:
            return fn()
        except HfHubHTTPError as e:
            resp = e.response
            status = resp.status_code if resp is not None else None
            if status != 429 and (status is None or status < 500) or attempt == API_ATTEMPTS:
                raise
            # the same reading of Retry-After / RateLimit as every other fetch
            asked = retry_after_seconds(resp)
            wait = float(min(MAX_WAIT, asked if asked is not None else 2 ** (attempt - 1)))
            log.warning("%s: HTTP %s from the Hub; retrying in %.3g s", what, status, wait)
            sleep(wait)
    raise AssertionError("unreachable")


def _reason(e: Exception) -> str:
    if isinstance(e, GatedRepoError):
        return "gated repo: accept its terms on the Hub and set a token (MGDATA_HF_CONN_ID or HF_TOKEN)"
    if isinstance(e, RepositoryNotFoundError):
        return "repo not found (or private: set a token through MGDATA_HF_CONN_ID or HF_TOKEN)"
    if isinstance(e, RevisionNotFoundError):
        return "revision not found"
    if isinstance(e, EntryNotFoundError):
        return "file not found at this revision"
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return redact_text(first)[:300]


def _failure(mirror: Mirror, e: Exception) -> FetchError:
    return fetch_error(FetchError, None, [(mirror.describe() + f" at {endpoint(mirror)}", _reason(e))])


def _hub_file(mirror: Mirror, base: str, commit: str, entry) -> HubFile:
    """A file entry of the Hub's tree or paths-info answer at `commit`, with the URL of its bytes."""
    return HubFile(
        repo=mirror.repo, repo_type=mirror.repo_type, path=entry.path, commit=commit, size=entry.size,
        sha256=entry.lfs.sha256 if entry.lfs else None, blob_id=entry.blob_id,
        url=hf_hub_url(mirror.repo, entry.path, repo_type=mirror.repo_type, revision=commit, endpoint=base),
    )  # fmt: skip


def resolve(mirror: Mirror, *, token: str | None = None) -> HubFile:
    """The file's commit, size and sha256 at the mirror's revision (two small requests, no download)."""
    path = mirror.path
    base = endpoint(mirror)
    revision = mirror.revision or "main"
    what = f"{mirror.repo}@{revision}/{path}"
    try:
        meta = get_hf_file_metadata(
            hf_hub_url(mirror.repo, path, repo_type=mirror.repo_type, revision=revision, endpoint=base),
            token=token or False,
            endpoint=base,
            retry_on_errors=True,
        )
        commit = meta.commit_hash
        if not commit:
            raise FetchError(f"{what}: the Hub sent no X-Repo-Commit header")
        api = HfApi(endpoint=base, token=token or False)
        infos = _call(
            what, lambda: api.get_paths_info(mirror.repo, [path], repo_type=mirror.repo_type, revision=commit)
        )
    except FetchError:
        raise
    except (HfHubHTTPError, OSError) as e:
        raise _failure(mirror, e) from None
    info = next((i for i in infos if i.path == path and hasattr(i, "blob_id")), None)
    if info is None:
        raise fetch_error(FetchError, None, [(mirror.describe(), f"file not found at commit {commit}")])
    return _hub_file(mirror, base, commit, info)


def list_files(mirror: Mirror, *, token: str | None = None) -> tuple[str, list[HubFile]]:
    """The files matching the mirror's `path_glob` at its revision, and the commit listed (tree API, no download)."""
    base = endpoint(mirror)
    revision = mirror.revision or "main"
    glob = mirror.path_glob or ""
    # List only below the glob's fixed leading folders: a model repo also holds ~26 GB of checkpoints elsewhere.
    fixed = []
    for part in glob.split("/")[:-1]:
        if any(c in part for c in "*?["):
            break
        fixed.append(part)
    folder = "/".join(fixed) or None
    api = HfApi(endpoint=base, token=token or False)
    what = f"{mirror.repo}@{revision}/{glob}"
    try:
        commit = _call(
            what, lambda: api.repo_info(mirror.repo, repo_type=mirror.repo_type, revision=revision).sha
        )
        entries = _call(
            what,
            lambda: list(
                api.list_repo_tree(
                    mirror.repo,
                    path_in_repo=folder,
                    recursive=True,
                    repo_type=mirror.repo_type,
                    revision=commit,
                )
            ),
        )
    except (HfHubHTTPError, OSError) as e:
        raise _failure(mirror, e) from None
    files = [
        _hub_file(mirror, base, commit, e)
        for e in entries
        if hasattr(e, "blob_id") and fnmatch.fnmatchcase(e.path, glob)
    ]
    return commit, sorted(files, key=lambda f: f.path)


def probe(mirror: Mirror) -> RemoteInfo:
    """What the mirror's revision holds now: `etag` is the file's sha256 (its blob id when not in LFS), so a moved
    revision whose file is byte-identical still compares equal."""
    hub = resolve(mirror, token=hf_token())
    return RemoteInfo(url=hub.url, size=hub.size, etag=hub.version, last_modified=None, accepts_ranges=True)


def fetch(
    mirror: Mirror, store: Store, key: str, *, label: str, size: int | None, checksums: dict
) -> FetchResult:
    """Resolve, check the catalog's expectations against the Hub's metadata, then stream and verify."""
    token = hf_token()
    hub = resolve(mirror, token=token)
    where = f"{mirror.describe()} (commit {hub.commit})"
    if size is not None and size != hub.size:
        raise fetch_error(
            ChecksumMismatch,
            label,
            [(where, f"size mismatch: the catalog expects {size} bytes, the Hub has {hub.size}")],
        )
    pinned = checksums.get("sha256")
    if pinned and hub.sha256 and pinned != hub.sha256:
        raise fetch_error(
            ChecksumMismatch,
            label,
            [(where, f"sha256 mismatch: the catalog pins {pinned}, the Hub has {hub.sha256}")],
        )
    expected = dict(checksums)
    if hub.sha256:
        expected["sha256"] = hub.sha256
    log.info("%s: %s, %d bytes, sha256 %s", label, where, hub.size, hub.sha256 or "(not in LFS: size only)")
    result = fetch_to_store(
        [hub.url],
        store,
        key,
        label=label,
        size=hub.size,
        checksums=expected,
        headers=_auth(token),
        max_backoff=MAX_WAIT,
    )
    # The etag we record is the content's identity on the Hub, which `probe` reports the same way.
    return replace(result, etag=hub.version)
