"""A Google Drive stand-in on the mirror server: the HTTP Drive speaks, with the page shapes it serves.

Drive cannot be reached from tests or the offline demo, so `DriveStandIn` answers the requests the gdrive adapter
(`mgdata.fetch.gdrive`) makes, the way drive.google.com and drive.usercontent.google.com do (recorded from the real
service and from gdown 6.5.1's parsers, which are written against them):

    GET drive.google.com/uc?id=ID&export=download       303 to drive.usercontent.google.com/download?id=ID&export=download
    GET drive.usercontent.google.com/download?id=ID...   the file (Content-Disposition: attachment; filename="...")
                                                        or, for a large file without confirm=t, the virus-scan page:
                                                        "Google Drive can't scan this file for viruses", a
                                                        <form id="download-form"> whose hidden inputs carry id,
                                                        export, confirm=t and uuid
                                                        or, for a file over its quota, the "Quota exceeded" page
                                                        ("Too many users have viewed or downloaded this file
                                                        recently ...", HTTP 200 like the real one)
    GET drive.google.com/embeddedfolderview?id=FOLDER   the folder listing: <title> the folder name, one
                                                        <a href="https://drive.google.com/file/d/ID/view"> per file
    unknown ids                                         404 with Drive's HTML error page

Mount it with `MirrorServer(root, routes=standin.routes())`; point the adapter at it with
`MGDATA_GDRIVE_URL=<server base URL>/drive.google.com`. The host names stay in the URL path, the way the mirror
lays every replica out under `<host>/<path>`.
"""

from __future__ import annotations

import html
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

DRIVE = "drive.google.com"
USERCONTENT = "drive.usercontent.google.com"

# Drive asks for a confirmation above ~100 MB ("too large for Google to check for viruses").
LARGE_FILE_BYTES = 100 * 1000 * 1000

QUOTA_PAGE = """<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title><meta http-equiv="content-type" content="text/html; charset=utf-8"/><link href=&#47;static&#47;doclist&#47;client&#47;css&#47;4033072956&#45;untrustedcontent.css rel="stylesheet" nonce="x"><link rel="icon" href="//ssl.gstatic.com/images/branding/product/1x/drive_2020q4_32dp.png"/></head><body><div class="uc-main"><div id="uc-text"><p class="uc-error-caption">Sorry, you can&#39;t view or download this file at this time.</p>
<p class="uc-error-subcaption">Too many users have viewed or downloaded this file recently. Please try accessing the file again later. If the file you are trying to access is particularly large or is shared with many people, it may take up to 24 hours to be able to view or download the file. If you still can't access a file after 24 hours, contact your domain administrator.</p></div></div><div class="uc-footer"><hr class="uc-footer-divider"></div></body></html>
"""

VIRUS_SCAN_PAGE = """<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title><meta http-equiv="content-type" content="text/html; charset=utf-8"/><style nonce="x">.goog-inline-block{{position:relative;display:inline-block}}</style><link rel="icon" href="//ssl.gstatic.com/images/branding/product/1x/drive_2020q4_32dp.png"/></head><body><div class="uc-main"><div id="uc-text"><p class="uc-warning-caption">Google Drive can't scan this file for viruses.</p><p class="uc-warning-subcaption"><span class="uc-name-size"><a href="/open?id={id}">{name}</a> ({size})</span> is too large for Google to check for viruses. Would you still like to download this file?</p><form id="download-form" action="{action}" method="get"><input type="submit" id="uc-download-link" class="goog-inline-block jfk-button jfk-button-action" value="Download anyway"/><input type="hidden" name="id" value="{id}"><input type="hidden" name="export" value="download"><input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="{uuid}"></form></div></div><div class="uc-footer"><hr class="uc-footer-divider"></div></body></html>
"""

NOT_FOUND_PAGE = """<!DOCTYPE html><html lang="en"><head><meta name="description" content="Web word processing, presentations and spreadsheets"><title>Google Drive - Page Not Found</title></head><body><div id="af-error-container"><p><b>404.</b> <ins>That’s an error.</ins></p><p>Sorry, the file you have requested does not exist.</p></div></body></html>
"""

FOLDER_PAGE = """<!DOCTYPE html><html><head><meta http-equiv="content-type" content="text/html; charset=utf-8"/><title>{title}</title><link rel="stylesheet" href="https://ssl.gstatic.com/docs/doclist/embeddedfolderview/css/3540004946-embeddedfolderview_css_ltr.css"></head><body><div class="flip-entries">{entries}</div></body></html>
"""

FOLDER_ENTRY = """<div class="flip-entry" id="entry-{id}" tabindex="0" role="link"><div class="flip-entry-info"><a href="https://drive.google.com/file/d/{id}/view?usp=drive_web" target="_blank"><div class="flip-entry-visual"><div class="flip-entry-visual-card"><div class="flip-entry-thumb"><img src="https://drive-thirdparty.googleusercontent.com/32/type/application/json" alt="{name}"></div></div></div><div class="flip-entry-list-icon"><img src="https://drive-thirdparty.googleusercontent.com/16/type/application/json"></div><div class="flip-entry-title">{name}</div></a></div><div class="flip-entry-last-modified"><div>Oct 30, 2023</div></div></div>"""


@dataclass
class DriveStandIn:
    """Files and folders by Drive id. `quota` holds ids that answer with the quota page (`quota_hits` times each,
    or for ever when None); `large_file_bytes` is where the virus-scan confirmation starts."""

    files: dict[str, Path] = field(default_factory=dict)
    folders: dict[str, tuple[str, list[tuple[str, str]]]] = field(
        default_factory=dict
    )  # id -> (name, [(id, name)])
    quota: dict[str, int | None] = field(default_factory=dict)
    large_file_bytes: int = LARGE_FILE_BYTES
    confirmations: int = 0  # virus-scan pages served (tests check the adapter went through one)
    cookies: list[str | None] = field(
        default_factory=list
    )  # the Cookie header of each request (a signed-in user)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_file(self, file_id: str, path: Path) -> None:
        self.files[file_id] = Path(path)

    def add_folder(self, folder_id: str, name: str, children: list[tuple[str, str]]) -> None:
        self.folders[folder_id] = (name, list(children))

    def routes(self) -> list[tuple[str, object]]:
        return [(f"{DRIVE}/", self._drive), (f"{USERCONTENT}/", self._usercontent)]

    # ----------------------------------------------------------------------------------------------------------------

    def _quota_hit(self, file_id: str) -> bool:
        with self._lock:
            if file_id not in self.quota:
                return False
            left = self.quota[file_id]
            if left is None:
                return True
            if left <= 1:
                del self.quota[file_id]
            else:
                self.quota[file_id] = left - 1
            return True

    @staticmethod
    def _query(handler) -> dict[str, str]:
        return {k: v[-1] for k, v in parse_qs(urlsplit(handler.path).query).items()}

    @staticmethod
    def _origin(handler) -> str:
        return f"http://{handler.headers.get('Host')}"

    def _drive(self, handler, relpath: str, method: str) -> None:
        self.cookies.append(handler.headers.get("Cookie"))
        q = self._query(handler)
        page = relpath[len(DRIVE) + 1 :]
        if page == "uc" and q.get("id"):
            location = f"{self._origin(handler)}/{USERCONTENT}/download?" + urlencode(
                {"id": q["id"], "export": "download"}
            )
            _html(handler, 303, "", method, {"Location": location})
        elif page == "embeddedfolderview" and q.get("id") in self.folders:
            name, children = self.folders[q["id"]]
            entries = "".join(FOLDER_ENTRY.format(id=i, name=html.escape(n)) for i, n in children)
            _html(handler, 200, FOLDER_PAGE.format(title=html.escape(name), entries=entries), method)
        else:
            _html(handler, 404, NOT_FOUND_PAGE, method)

    def _usercontent(self, handler, relpath: str, method: str) -> None:
        self.cookies.append(handler.headers.get("Cookie"))
        q = self._query(handler)
        file_id = q.get("id", "")
        path = self.files.get(file_id)
        if relpath != f"{USERCONTENT}/download" or path is None:
            _html(handler, 404, NOT_FOUND_PAGE, method)
            return
        if self._quota_hit(file_id):
            _html(handler, 200, QUOTA_PAGE, method)
            return
        size = path.stat().st_size
        if size >= self.large_file_bytes and q.get("confirm") != "t":
            with self._lock:
                self.confirmations += 1
            page = VIRUS_SCAN_PAGE.format(
                id=file_id,
                name=html.escape(path.name),
                size=f"{size / 1e9:.1f}G" if size >= 1e9 else f"{size / 1e6:.0f}M",
                action=f"{self._origin(handler)}/{USERCONTENT}/download",
                uuid=uuid.uuid5(uuid.NAMESPACE_URL, file_id),
            )
            _html(handler, 200, page, method)
            return
        disposition = f'attachment; filename="{path.name}"'
        handler.send_path(path, head=method == "HEAD", headers={"Content-Disposition": disposition})


def _html(handler, status: int, body: str, method: str, headers: dict[str, str] | None = None) -> None:
    handler._send_body(status, body.encode(), "text/html; charset=utf-8", headers, method == "HEAD")
