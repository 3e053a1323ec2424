"""Keeps secrets out of logs: the one masking routine for every URL and error message the pipeline
prints. A URL is shown with its password and password-like query values (password=, token=, ...)
replaced by ***; an error message gets every URL in it masked and, when the URL it concerns is
known, that URL's secrets removed wherever they appear (plain or percent-encoded).

Hand-written for a measured reason: SQLAlchemy's make_url(url).render_as_string(hide_password=True) leaves
`?password=` and `token=` query values in clear, and raises on the URLs a typo makes unparsable (a raw @, / or # in
the password, a bad port), which must still be printed without their secret (tests/test_safety.py's URLS)."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

MASK = "***"
WITHHELD = "<URL withheld: it may hold a password>"
SECRET_KEYS = {"password", "passwd", "pwd", "pass", "secret", "token", "key", "api_key", "apikey", "access_token"}
# scheme://user:<anything up to the last @>@rest: used when a raw / ? or # in the password breaks URL parsing
USERINFO = re.compile(r"^([A-Za-z][\w+.-]*://[^:@/?#]*:)(.*)@")
URL_IN_TEXT = re.compile(r"[A-Za-z][\w+.-]*://[^\s'\"<>`]+")
TRAILING = ".,;:)]}!"  # punctuation that ends a sentence rather than the URL quoted in it


def is_secret_key(name: str) -> bool:
    """Return True when the query parameter `name` holds a secret (password, token, key, ...)."""
    return name.lower() in SECRET_KEYS


def mask_query(query: str) -> str:
    """Return the URL `query` string with the values of password-like parameters replaced by ***."""
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(is_secret_key(k) for k, _ in pairs):
        return query
    return urlencode([(k, MASK if is_secret_key(k) else v) for k, v in pairs], safe="*")


def split(url: str) -> tuple[str, str, str, str, str] | None:
    """Return `url` split into its five parts, or None when it cannot be parsed reliably (a raw @, / ? or # in
    the password, a broken IPv6 host)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError on a malformed host or port)
    except ValueError:
        return None
    if "@" not in parts.netloc and "@" in url.partition("://")[2]:
        return None
    return parts


def mask_url(url: str | None) -> str:
    """Return `url` safe to print: its password and password-like query values replaced by ***."""
    if not url:
        return ""
    parts = split(url)
    if parts is None:
        masked = USERINFO.sub(rf"\1{MASK}@", url)  # parsing is unreliable: cut out everything that may be secret
        return mask_url(masked) if masked != url and split(masked) is not None else WITHHELD
    userinfo, at, host = parts.netloc.rpartition("@")
    netloc = f"{userinfo.partition(':')[0]}:{MASK}@{host}" if at and ":" in userinfo else parts.netloc
    query = mask_query(parts.query)
    head, sep, rest = url.partition("://")  # replaced in place: urlunsplit would turn sqlite:/// into sqlite:/
    rest = rest.replace(parts.netloc, netloc, 1)
    return head + sep + (rest.replace(f"?{parts.query}", f"?{query}", 1) if query != parts.query else rest)


def url_secrets(url: str | None) -> set[str]:
    """Return the secrets `url` holds (its password, password-like query values) as written and decoded."""
    if not url:
        return set()
    parts = split(url)
    found: list[str] = []
    if parts is None:
        match = USERINFO.match(url)
        found += [match.group(2)] if match else []
        query = url.partition("?")[2]
    else:
        userinfo, at, _ = parts.netloc.rpartition("@")
        found += [userinfo.partition(":")[2]] if at and ":" in userinfo else []
        query = parts.query
    found += [v for k, v in parse_qsl(query, keep_blank_values=True) if is_secret_key(k)]
    variants = {form for secret in found for form in (secret, unquote(secret), quote(unquote(secret), safe=""))}
    return {v for v in variants if v}


def mask_quoted(found: str) -> str:
    """Return a URL `found` in a message masked, keeping the punctuation that followed it."""
    url = found.rstrip(TRAILING)
    return mask_url(url) + found[len(url) :]


def scrub(text: object, *urls: str | None) -> str:
    """Return `text` (an error message) safe to print: every URL in it masked, and the secrets of `urls` (the
    URLs it may concern) replaced by *** wherever they appear."""
    out = URL_IN_TEXT.sub(lambda match: mask_quoted(match.group(0)), str(text))
    for secret in sorted({s for url in urls for s in url_secrets(url)}, key=len, reverse=True):
        out = out.replace(secret, MASK)
    return out
