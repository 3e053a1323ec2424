"""Keeps secrets out of logs: the one masker of every URL and error message the pipeline prints (a URL's password and
password-like query values become ***; an error message gets every URL in it masked and the secrets of the URLs it
concerns removed, plain or percent-encoded). Not SQLAlchemy's render_as_string(hide_password=True): it leaves
`?password=` and `token=` in clear and raises on the URLs a typo makes unparsable (tests/test_safety.py's URLS)."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

MASK = "***"
WITHHELD = "<URL withheld: it may hold a password>"
SECRET_KEYS = {"password", "passwd", "pwd", "pass", "secret", "token", "key", "api_key", "apikey", "access_token"}
USERINFO = re.compile(r"^([A-Za-z][\w+.-]*://[^:@/?#]*:)(.*)@")  # scheme://user:<up to the last @>@ (when unparsable)
URL_IN_TEXT = re.compile(r"[A-Za-z][\w+.-]*://[^\s'\"<>`]*[^\s'\"<>`.,;:)\]}!]")  # not the sentence's end: .,;:)]}!


def mask_query(query: str) -> str:
    """Return the URL `query` string with the values of password-like parameters replaced by ***."""
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(k.lower() in SECRET_KEYS for k, _ in pairs):
        return query
    return urlencode([(k, MASK if k.lower() in SECRET_KEYS else v) for k, v in pairs], safe="*")


def split(url: str) -> tuple[str, str, str, str, str] | None:
    """Return `url` split into its five parts, or None when it is unreliable (a raw @ / ? # in the password)."""
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
    parts = split(url := url or "")
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
    parts = split(url := url or "")
    if parts is None:
        match = USERINFO.match(url)
        found, query = [match.group(2)] if match else [], url.partition("?")[2]
    else:
        userinfo, at, _ = parts.netloc.rpartition("@")
        found, query = [userinfo.partition(":")[2]] if at and ":" in userinfo else [], parts.query
    found += [v for k, v in parse_qsl(query, keep_blank_values=True) if k.lower() in SECRET_KEYS]
    variants = {form for secret in found for form in (secret, unquote(secret), quote(unquote(secret), safe=""))}
    return {v for v in variants if v}


def scrub(text: object, *urls: str | None) -> str:
    """Return the error message `text` safe to print: its URLs masked, and the secrets of `urls` replaced by ***."""
    out = URL_IN_TEXT.sub(lambda match: mask_url(match.group(0)), str(text))
    for secret in sorted({s for url in urls for s in url_secrets(url)}, key=len, reverse=True):
        out = out.replace(secret, MASK)
    return out
