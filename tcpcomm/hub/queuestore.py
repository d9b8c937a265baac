"""
The durable queue store of C{--queue-dir}: one SQLite file, written through
C{twisted.enterprise.adbapi} with a single connection, so that every call
runs, in the order made, in one worker thread, never on the reactor's.
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred

from tcpcomm.hub.queues import Waiting

#: The file in C{--queue-dir} that holds the queues.
FILENAME = "queues.sqlite3"

SCHEMA = """
CREATE TABLE IF NOT EXISTS waiting (
    seq INTEGER PRIMARY KEY,
    client TEXT NOT NULL,
    queued REAL NOT NULL,
    expires REAL NOT NULL,
    message BLOB NOT NULL
)
"""


def prepare(connection: sqlite3.Connection) -> None:
    """
    Set up a new connection: the write-ahead log (a commit is one append),
    a full sync on each commit, and the table.
    """
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute(SCHEMA)
    connection.commit()


def checkQueueDir(path: str) -> str:
    """
    Make C{path} if missing, and open (or create) its database once, so
    that a bad or unwritable folder is refused at start; returns the
    database's path, or raises L{OSError} or L{sqlite3.Error}.
    """
    os.makedirs(path, exist_ok=True)
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(f"{path} is not writable")
    database = os.path.join(path, FILENAME)
    connection = sqlite3.connect(database)
    try:
        prepare(connection)
    finally:
        connection.close()
    return database


class SQLiteStore:
    """
    Queues kept in C{database}, through a pool of exactly one connection:
    calls commit in the order they are made, so that a removal made after
    an addition never overtakes it.
    """

    def __init__(self, database: str, reactor: Any = None) -> None:
        kwargs: dict[str, Any] = {}
        if reactor is not None:
            kwargs["cp_reactor"] = reactor
        self.pool = adbapi.ConnectionPool(
            "sqlite3",
            database,
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=prepare,
            cp_noisy=False,
            **kwargs,
        )

    def load(self) -> Deferred[list[Waiting]]:
        def select(cursor: Any) -> list[Waiting]:
            cursor.execute("SELECT seq, client, message, queued, expires FROM waiting ORDER BY seq")
            return [
                Waiting(seq, client, bytes(message), queued, expires)
                for seq, client, message, queued, expires in cursor.fetchall()
            ]

        return self.pool.runInteraction(select)

    def add(self, entry: Waiting) -> Deferred[None]:
        # OR REPLACE: an entry put back after a hand-over that failed may
        # still be there.
        return self.pool.runOperation(
            "INSERT OR REPLACE INTO waiting (seq, client, queued, expires, message) "
            "VALUES (?, ?, ?, ?, ?)",
            (entry.seq, entry.clientId, entry.queued, entry.expires, entry.message),
        )

    def remove(self, seqs: list[int]) -> Deferred[None]:
        def delete(cursor: Any) -> None:
            cursor.executemany("DELETE FROM waiting WHERE seq = ?", [(s,) for s in seqs])

        return self.pool.runInteraction(delete)

    def close(self) -> None:
        """
        Stop the worker thread and close the connection (twistd's shutdown
        does it too); once only.
        """
        if self.pool.running:
            self.pool.close()
