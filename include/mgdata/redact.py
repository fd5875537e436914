"""Credentials out of messages: URLs and exception texts as they may be logged, shown or stored.

A URL may carry a token in its userinfo or query string; everything that names a URL in a message, a record or a
report goes through `redact_url`, and free text that may quote one (an exception's message) through `redact_text`.
This module imports nothing from mgdata: the catalog and every fetch module use it.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit


def redact_url(url: str) -> str:
    """`scheme://host[:port]/path`: userinfo, query string and fragment removed (they may carry tokens)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = parts.port
    except ValueError:
        return redact_text(url.split("?", 1)[0].split("#", 1)[0])
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def redact_text(text: str) -> str:
    text = re.sub(r"(?<=://)[^/\s@'\"]*@", "", text)  # userinfo
    return re.sub(r"(/[^\s'\"?]*)\?[^\s'\")]*", r"\1", text)  # query strings after a path
