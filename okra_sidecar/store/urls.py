"""Redis URLs: what one names (address, user, password, TLS), and a Cluster's seed list.

Without redis-py, so that settings can check a URL before anything connects.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field, replace
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

__all__ = ["RedisAddress", "check_redis_url", "parse_redis_url", "split_seed_urls", "tls_context"]


@dataclass(frozen=True)
class RedisAddress:
    """Where and as whom to connect: a unix socket `path`, or `host` and `port`."""

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    # Set for rediss:// URLs: the connection is wrapped in TLS with this context.
    tls: ssl.SSLContext | None = field(default=None, repr=False, compare=False)


_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def tls_context(url: str, query: dict[str, list[str]]) -> ssl.SSLContext:
    """The TLS context a rediss:// URL asks for, with redis-py's query parameter names.

    `ssl_ca_certs` (a CA bundle), `ssl_certfile` and `ssl_keyfile` (a client certificate),
    `ssl_cert_reqs` (`none`, `optional`, `required`: the default) and `ssl_check_hostname`.

    Raises:
        ValueError: an unknown `ssl_cert_reqs`, or a file that cannot be read.
    """

    def one(name: str) -> str | None:
        return query[name][0] if name in query else None

    reqs = (one("ssl_cert_reqs") or "required").lower()
    if reqs not in _CERT_REQS:
        raise ValueError(
            f"Redis URL {_shown(url)!r}: ssl_cert_reqs must be none, optional or required"
        )
    try:
        context = ssl.create_default_context(cafile=one("ssl_ca_certs"))
        certfile = one("ssl_certfile")
        if certfile:
            context.load_cert_chain(certfile, one("ssl_keyfile"))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"Redis URL {_shown(url)!r}: cannot load its TLS files ({exc})") from None
    check = one("ssl_check_hostname")
    context.check_hostname = reqs != "none" and (check or "true").lower() in ("1", "true", "yes")
    context.verify_mode = _CERT_REQS[reqs]
    return context


def parse_redis_url(url: str) -> RedisAddress:
    """Parse `redis[s]://[user:pass@]host[:port][/db]` or `unix://[user:pass@]/path[?db=N]`.

    Raises:
        ValueError: another scheme, no socket path, a port or db that is not a number, or
            TLS settings that cannot be used (see `tls_context`).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError(
            f"Redis URL {_shown(url)!r}: the scheme must be redis://, rediss:// or unix://"
        )
    try:
        port = parts.port or 6379
    except ValueError as exc:
        raise ValueError(f"Redis URL {_shown(url)!r}: bad port ({exc})") from None
    query = parse_qs(parts.query)
    # As redis-py: `?db=N` wins; a redis:// URL may also name it as the path, `/N`.
    if "db" in query:
        db_text = query["db"][0]
    else:
        db_text = unquote(parts.path).strip("/") if parts.scheme != "unix" else ""
    if db_text and not db_text.isdigit():
        raise ValueError(f"Redis URL {_shown(url)!r}: db must be a number, not {db_text!r}")
    address = RedisAddress(
        db=int(db_text or "0"),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
        tls=tls_context(url, query) if parts.scheme == "rediss" else None,
    )
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"Redis URL {_shown(url)!r}: unix:// needs a socket path")
        return replace(address, path=unquote(parts.path))
    return replace(address, host=unquote(parts.hostname or "localhost"), port=port)


def split_seed_urls(url: str) -> list[str]:
    """One URL per node of `redis[s]://[user:pass@]host:port,host:port[/db][?query]`.

    A URL naming one node comes back as it is.
    """
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    auth = f"{userinfo}@" if userinfo else ""
    return [urlunsplit(parts._replace(netloc=f"{auth}{host}")) for host in hosts.split(",") if host]


def _shown(url: str) -> str:
    """`url` with its password masked, for an error message."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    return urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{hosts}"))


def check_redis_url(url: str) -> None:
    """Parse every node a URL names (one, or a Cluster's seeds).

    Raises:
        ValueError: what `parse_redis_url` refuses, for any of them.
    """
    for seed in split_seed_urls(url) or [url]:
        parse_redis_url(seed)
