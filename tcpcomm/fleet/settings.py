"""
What C{--backplane} names, and the error of a backplane that could not say:
kept apart from the backplane itself so that options and the admin API use
them without importing the Redis client (which imports the reactor).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit


class BackplaneUnavailable(Exception):
    """
    The backplane could not say: Redis is not connected, did not answer in
    time, or the node asked did not reply in time.
    """


@dataclass(frozen=True)
class RedisAddress:
    """
    Where the backplane's Redis is, from C{--backplane}.
    """

    host: str
    port: int
    db: int
    tls: bool
    username: str | None = None
    password: str | None = None

    def withPassword(self, password: str) -> RedisAddress:
        return RedisAddress(self.host, self.port, self.db, self.tls, self.username, password)

    def __str__(self) -> str:
        # Never the password: this is what logs and /healthz show.
        user = f"{self.username}@" if self.username else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss' if self.tls else 'redis'}://{user}{host}:{self.port}/{self.db}"


def parseRedisURL(text: str) -> RedisAddress:
    """
    C{redis://[USER[:PASSWORD]@]HOST[:PORT][/DB]}, or C{rediss://} for TLS.

    @raise ValueError: with the reason, if C{text} is not such a URL.
    """
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"not a Redis URL ({e})") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("a Redis URL starts with redis:// or rediss:// (TLS)")
    if not parts.hostname:
        raise ValueError("a Redis URL names a host: redis://HOST:PORT/DB")
    if parts.query or parts.fragment:
        raise ValueError("a Redis URL takes no ?query or #fragment")
    path = parts.path.strip("/") or "0"
    if not path.isdigit():
        raise ValueError(f"the database must be a number, not {path!r}")
    return RedisAddress(
        host=parts.hostname,
        port=6379 if port is None else port,
        db=int(path),
        tls=parts.scheme == "rediss",
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )


def checkNodeName(name: str) -> None:
    """
    @raise ValueError: unless C{name} can name a node: it is part of keys,
        channels and C{node/id} ids.
    """
    if not name or len(name) > 200:
        raise ValueError("a node name is 1 to 200 characters")
    if "/" in name or any(c.isspace() for c in name):
        raise ValueError("a node name holds no '/' and no white space")


def checkPrefix(prefix: str) -> None:
    """
    @raise ValueError: unless C{prefix} can start keys and channels.
    """
    if not prefix or len(prefix) > 200 or any(c.isspace() for c in prefix):
        raise ValueError("a prefix is 1 to 200 characters, with no white space")
