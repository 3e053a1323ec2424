"""Keeps secrets out of logs: storage URLs are shown with their password (and password-like query
parameters) replaced by ***."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
SECRET_KEYS = {"password", "passwd", "pwd", "pass", "secret", "token", "key", "api_key", "apikey", "access_token"}
# scheme://user:<anything up to the last @>@rest: used when a raw / ? or # in the password breaks URL parsing
USERINFO = re.compile(r"^([A-Za-z][\w+.-]*://[^:@/?#]*:).*@")


def mask_query(query: str) -> str:
    """Return the URL `query` string with the values of password-like parameters replaced by ***."""
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(k.lower() in SECRET_KEYS for k, _ in pairs):
        return query
    return urlencode([(k, MASK if k.lower() in SECRET_KEYS else v) for k, v in pairs], safe="*")


def mask_url(url: str | None) -> str:
    """Return `url` safe to print: its password and password-like query values replaced by ***."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or ("@" not in parts.netloc and "@" in url.partition("://")[2]):
        masked = USERINFO.sub(rf"\1{MASK}@", url)  # parsing is unreliable: cut out everything that may be secret
        return masked if masked != url or "@" not in url else "<URL withheld: it may hold a password>"
    userinfo, at, host = parts.netloc.rpartition("@")
    netloc = f"{userinfo.partition(':')[0]}:{MASK}@{host}" if at and ":" in userinfo else parts.netloc
    query = mask_query(parts.query)
    if netloc == parts.netloc and query == parts.query:
        return url
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
