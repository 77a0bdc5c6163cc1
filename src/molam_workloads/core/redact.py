"""URLs as logs and messages may show them: scheme, host and port only.

A URL carries secrets in its user information (``redis://:password@host``), its query
(``?password=``, ``?sig=``) and often its path (a webhook's token: ``/hooks/T0/B1/xyz``). Every
URL that is logged, printed or put in an error message goes through ``redact_url`` first; text
that may quote URLs (an exception's message) goes through ``redact_urls_in``.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

UNPARSEABLE = "(unparseable URL)"
# A scheme (RFC 3986: a letter, then letters, digits, + - .) and "://", then everything up to
# white space or a quote: the span of a URL inside free text.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def _hosts(netloc: str) -> str:
    # The hosts follow the last "@" (a password may hold an unescaped "@"); a multi-host
    # PostgreSQL DSN keeps its comma-separated host:port list, which holds no secret.
    return netloc.rpartition("@")[2]


def redact_url(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: no user, password, path, query or fragment.

    A value without a scheme (a Kafka ``host:port``) keeps its host and port only. A value that
    cannot be parsed is never echoed back.
    """
    try:
        parts = urlsplit(url.strip())
    except ValueError:  # an unclosed "[" of an IPv6 host, say
        return UNPARSEABLE
    if "://" not in url:
        # Not a URL: keep what stands between a user part and a path, query or fragment.
        bare = re.split(r"[/?#]", url.strip(), maxsplit=1)[0]
        return _hosts(bare) or UNPARSEABLE
    hosts = _hosts(parts.netloc)
    if not parts.scheme:
        return UNPARSEABLE
    # A DSN naming a Unix socket in its query (postgresql:///db?host=/run/pg) has no host.
    return f"{parts.scheme}://{hosts or '(local)'}"


def redact_hosts(servers: str) -> str:
    """A comma-separated list of servers or URLs (Kafka's bootstrap servers), each redacted."""
    return ",".join(redact_url(s) for s in servers.split(",") if s.strip())


def redact_urls_in(text: str) -> str:
    """``text`` with every URL in it replaced by its ``redact_url`` form."""
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
