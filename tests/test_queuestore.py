"""
The SQLite queue store of C{--queue-dir}: a real file in a temporary
folder, written by adbapi's one worker thread (so these tests use the real
reactor, each wait bounded by trial's timeout).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Generator
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from tcpcomm.hub.queues import QueueFull, Queues, Waiting
from tcpcomm.hub.queuestore import FILENAME, SQLiteStore, checkQueueDir

from .processes import scratch


class SQLiteStoreTests(TestCase):
    """
    What the store commits survives the store (and the process) that wrote it.
    """

    timeout = 30.0

    def store(self, database: str) -> SQLiteStore:
        store = SQLiteStore(database, reactor)
        self.addCleanup(store.close)
        return store

    def setUp(self) -> None:
        self.database = checkQueueDir(os.path.join(scratch(self), "queues"))

    @inlineCallbacks
    def test_addLoadRemove(self) -> Generator[Deferred[Any], Any, None]:
        """Added entries load back in order, from another store on the same file, minus removed ones."""
        first = self.store(self.database)
        for seq, text in ((1, b"one"), (2, b"two"), (3, b"\x00three")):
            yield first.add(Waiting(seq, "agent-7", text, 100.0 + seq, 1000.0))
        yield first.remove([2])
        first.close()
        second = self.store(self.database)
        loaded = yield second.load()
        self.assertEqual(
            loaded,
            [
                Waiting(1, "agent-7", b"one", 101.0, 1000.0),
                Waiting(3, "agent-7", b"\x00three", 103.0, 1000.0),
            ],
        )

    @inlineCallbacks
    def test_committedWhenFired(self) -> Generator[Deferred[Any], Any, None]:
        """Once an add has fired, another connection (another process) already sees it."""
        store = self.store(self.database)
        yield store.load()
        yield store.add(Waiting(1, "agent-7", b"one", 1.0, 2.0))
        with sqlite3.connect(self.database) as other:
            rows = other.execute("SELECT client, message FROM waiting").fetchall()
        self.assertEqual(rows, [("agent-7", b"one")])

    @inlineCallbacks
    def test_notOnReactorThread(self) -> Generator[Deferred[Any], Any, None]:
        """The store's SQL runs in its worker thread, never the reactor's."""
        store = self.store(self.database)
        threads = []
        yield store.pool.runInteraction(lambda cursor: threads.append(threading.current_thread()))
        self.assertIsNot(threads[0], threading.main_thread())

    @inlineCallbacks
    def test_boundsHoldAcrossRestart(self) -> Generator[Deferred[Any], Any, None]:
        """Queues loaded from the file count against the bounds, as before the restart."""
        clock = Clock()
        clock.advance(1000)
        before = Queues(clock, self.store(self.database), maxMessages=2)
        yield before.start()
        yield before.put("agent-7", b"a", 60)
        yield before.put("agent-7", b"b", 60)
        after = Queues(clock, self.store(self.database), maxMessages=2)
        yield after.start()
        self.assertEqual(after.summary()[0]["messages"], 2)
        yield self.assertFailure(after.put("agent-7", b"c", 60), QueueFull)
        position = yield after.put("other", b"c", 60)
        self.assertEqual(position, 1)

    def test_badDirectory(self) -> None:
        """A folder that cannot be made (under a plain file) raises, naming nothing yet."""
        plain = os.path.join(scratch(self), "plain")
        with open(plain, "w") as f:
            f.write("not a folder")
        self.assertRaises(OSError, checkQueueDir, os.path.join(plain, "queues"))

    def test_databaseMade(self) -> None:
        """checkQueueDir makes the folder and the database, in WAL mode."""
        folder = os.path.join(scratch(self), "new", "queues")
        database = checkQueueDir(folder)
        self.assertEqual(database, os.path.join(folder, FILENAME))
        with sqlite3.connect(database) as connection:
            (mode,) = connection.execute("PRAGMA journal_mode").fetchone()
        self.assertEqual(mode, "wal")
