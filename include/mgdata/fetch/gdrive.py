"""The gdrive adapter: a catalog mirror `{kind: gdrive, id: ...}` (a file), or `{kind: gdrive, id: FOLDER, path: NAME}`
(the file called NAME in a shared folder, e.g. OCR-VQA's dataset.json, whose own id is not published).

Drive answers a download in one of a few page shapes, which gdown 6.5.1 knows and we reuse its parser for:

* the file itself (`Content-Disposition: attachment`), usually after a 303 to drive.usercontent.google.com;
* the large-file "virus scan warning" page: a form whose action and hidden inputs (`confirm=t`, `uuid`) make the
  real download URL (`gdown.download.get_url_from_gdrive_confirmation`);
* the quota page, "Too many users have viewed or downloaded this file recently" (Drive's 24-hour lockout), or a
  `downloadQuotaExceeded` error: that attempt fails with `DriveQuotaExceeded`, whose message says what to do, and
  `fetch_mirrors` moves on to the next mirror (the sha256-pinned Hugging Face copy).

Only the resolution of the download URL happens here (a few small HTML pages); the body then streams straight into
the store through `mgdata.fetch.http.fetch_to_store` on the same session (cookies kept): Range resume, retries,
checksums checked before publishing. No local disk is used, whatever the file's size.

Settings: `MGDATA_GDRIVE_URL` (Drive's base URL, default https://drive.google.com; tests and the demo point it at the
stand-in in `offline_mirror.drive`), `MGDATA_GDRIVE_COOKIES` (a Netscape cookies file of a signed-in Google account,
e.g. the one `gdown --cookies-from-browser chrome` writes to ~/.cache/gdown/cookies.txt; it lifts most quota
lockouts). The cookies never appear in logs or errors.
"""

from __future__ import annotations

import html
import logging
import os
import re
import time
from http.cookiejar import MozillaCookieJar
from urllib.parse import urlencode

import requests
from gdown.download import get_url_from_gdrive_confirmation
from gdown.exceptions import FileURLRetrievalError

from mgdata.catalog import Mirror
from mgdata.fetch.http import fetch_to_store
from mgdata.fetch.http import probe as probe_url
from mgdata.fetch.transfer import (
    CONNECT_TIMEOUT,
    FetchError,
    FetchResult,
    RemoteInfo,
    fetch_error,
    new_session,
)
from mgdata.redact import redact_url
from mgdata.storage import Store

log = logging.getLogger("mgdata.fetch.gdrive")

DEFAULT_URL = "https://drive.google.com"
MAX_PAGE_BYTES = 2 * 1024 * 1024  # Drive's HTML pages are a few KB; anything bigger is not a page we parse
MAX_HOPS = 5  # uc -> usercontent -> confirmation -> file, with room to spare
ATTEMPTS = 3  # per page request, for 5xx and connection errors
_QUOTA = re.compile(
    r"too many users have viewed or downloaded|quota exceeded|downloadquotaexceeded", re.IGNORECASE
)
_SUBCAPTION = re.compile(r'<p class="uc-error-subcaption">(.*?)</p>', re.DOTALL)
# gdown 6.5.1's folder parser (download_folder._parse_embedded_folder_view) reads these links from the same page.
_FILE_LINK = re.compile(r"https://drive\.google\.com/file/d/([-\w]{25,})/view")


class DriveQuotaExceeded(FetchError):
    """Drive refused the download for now (its per-file quota); the message says what to do."""


def base_url() -> str:
    return (os.environ.get("MGDATA_GDRIVE_URL") or DEFAULT_URL).rstrip("/")


def _session() -> requests.Session:
    session = new_session(pool=2)
    cookies = os.environ.get("MGDATA_GDRIVE_COOKIES")
    if cookies:
        jar = MozillaCookieJar(os.path.expanduser(cookies))
        try:
            jar.load(ignore_discard=True, ignore_expires=True)
        except OSError as e:
            raise FetchError(
                f"MGDATA_GDRIVE_COOKIES: cannot read the cookies file {cookies}: {e.strerror or e}"
            ) from None
        for cookie in jar:
            if cookie.expires == 0:  # browser exports mark session cookies so (gdown does the same)
                cookie.expires = None
        session.cookies.update(jar)
    return session


def quota_message(where: str, detail: str) -> str:
    return (
        f"Google Drive quota exceeded for {where}: {detail.strip()} "
        "Drive locks a popular file for up to 24 hours. What to do: let the next mirror in the catalog deliver it "
        "(its sha256-pinned copy), or wait about 24 h and clear the fetch task, or set MGDATA_GDRIVE_COOKIES to a "
        "cookies file of a signed-in Google account (e.g. written by `gdown --cookies-from-browser chrome`)."
    )


def _get(session: requests.Session, url: str, where: str, *, stream: bool = True) -> requests.Response:
    """GET with a few retries on 5xx and connection errors (the pages are tiny; the body fetch has its own)."""
    reason = ""
    for attempt in range(ATTEMPTS):
        if attempt:
            time.sleep(0.5 * 2**attempt)
        try:
            resp = session.get(url, stream=stream, timeout=(CONNECT_TIMEOUT, 60), allow_redirects=True)
        except (requests.ConnectionError, requests.Timeout) as e:
            reason = f"{type(e).__name__} for {redact_url(url)}"
            continue
        if resp.status_code >= 500:
            reason = f"HTTP {resp.status_code} from {redact_url(url)}"
            resp.close()
            continue
        return resp
    raise fetch_error(FetchError, None, [(where, f"{reason} (gave up after {ATTEMPTS} attempts)")])


def _page(resp: requests.Response) -> str:
    with resp:
        body = resp.raw.read(MAX_PAGE_BYTES + 1, decode_content=True)
    return body[:MAX_PAGE_BYTES].decode(resp.encoding or "utf-8", errors="replace")


def _refused(where: str, status: int, page: str) -> FetchError:
    """Why Drive answered with a page instead of the file."""
    if _QUOTA.search(page):
        m = _SUBCAPTION.search(page)
        detail = html.unescape(re.sub(r"<[^>]+>", "", m.group(1))) if m else "downloadQuotaExceeded."
        return fetch_error(DriveQuotaExceeded, None, [(where, quota_message(where, detail))])
    if status == 404 or "does not exist" in page:
        return fetch_error(
            FetchError, None, [(where, "no such file on Google Drive (HTTP 404); check the id")]
        )
    title = re.search(r"<title>(.*?)</title>", page, re.DOTALL)
    what = html.unescape(title.group(1)).strip() if title else f"HTTP {status}"
    return fetch_error(
        FetchError,
        None,
        [
            (
                where,
                f"Drive answered with a page ({what!r}), not the file: is it shared as 'Anyone with the link'?",
            )
        ],
    )


def resolve(mirror: Mirror, session: requests.Session) -> str:
    """The URL that serves the file's bytes: through the redirect and, for large files, the confirmation page."""
    where = mirror.describe()
    file_id = folder_file_id(mirror, session) if mirror.path else mirror.id
    url = f"{base_url()}/uc?" + urlencode({"id": file_id, "export": "download"})
    for _ in range(MAX_HOPS):
        resp = _get(session, url, where)
        if resp.status_code == 200 and "attachment" in resp.headers.get("Content-Disposition", ""):
            final = resp.url
            resp.close()  # never read: fetch_to_store streams it into the store, resumable and verified
            return final
        status, page = resp.status_code, _page(resp)
        if status != 200 or _QUOTA.search(page):
            raise _refused(where, status, page)
        try:
            url = get_url_from_gdrive_confirmation(page)
        except FileURLRetrievalError:
            raise _refused(where, status, page) from None
        log.info("%s: Drive asked for a confirmation (large file); following it", where)
    raise fetch_error(FetchError, None, [(where, f"no file after {MAX_HOPS} Drive pages")])


def folder_file_id(mirror: Mirror, session: requests.Session) -> str:
    """The id of the file named `mirror.path` in the folder `mirror.id` (Drive's embedded folder view)."""
    import bs4

    where = mirror.describe()
    resp = _get(session, f"{base_url()}/embeddedfolderview?" + urlencode({"id": mirror.id}), where)
    status, page = resp.status_code, _page(resp)
    if status != 200:
        raise _refused(where, status, page)
    names = []
    for a in bs4.BeautifulSoup(page, features="html.parser").find_all("a"):
        m = _FILE_LINK.match(a.get("href") or "")
        if m:
            name = a.get_text(strip=True)
            names.append(name)
            if name == mirror.path:
                return m.group(1)
    raise fetch_error(
        FetchError,
        None,
        [(where, f"the Drive folder has no file {mirror.path!r} (it lists {sorted(names)})")],
    )


def fetch(
    mirror: Mirror, store: Store, key: str, *, label: str, size: int | None, checksums: dict
) -> FetchResult:
    with _session() as session:
        url = resolve(mirror, session)
        try:
            return fetch_to_store(
                [url], store, key, label=label, size=size, checksums=checksums, session=session
            )
        except FetchError as e:
            # Name the Drive file, not the one-time download URL.
            raise fetch_error(
                type(e), label, [(mirror.describe(), reason) for _, reason in e.failures]
            ) from None


def probe(mirror: Mirror) -> RemoteInfo:
    with _session() as session:
        return probe_url(resolve(mirror, session), session=session)
