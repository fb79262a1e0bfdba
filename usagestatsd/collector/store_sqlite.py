"""SQLite: one file under the state directory, WAL, one writer and one reader connection."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from usagestatsd.collector.store import SqlStore

CHECKPOINT_TRIES = 50
CHECKPOINT_PAUSE_S = 0.02


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE in `transaction`).
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL: a power cut may lose the last few transactions but never corrupts the
    # file; a full fsync per batch would cap ingest far below what a fleet sends.
    conn.execute("PRAGMA synchronous=NORMAL")
    # A deleted report is overwritten in the file, not left in a free page: deletion on
    # request must leave nothing behind (it costs only on deletes and retention).
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute("PRAGMA cache_size=-32000")
    return conn


class SqliteStore(SqlStore):
    """The default backend."""

    backend = "sqlite"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        # The file holds usage data: readable by the collector's user only.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.close(fd)
        self.path = path
        super().__init__(_connect(path), _connect(path))

    @contextlib.contextmanager
    def transaction(self, conn: Any) -> Iterator[None]:
        """BEGIN IMMEDIATE for the writer (no upgrade deadlocks), deferred for reads."""
        conn.execute("BEGIN IMMEDIATE" if conn is self._w else "BEGIN")
        try:
            yield
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def scrub(self) -> None:
        """Copy the write-ahead log into the file and truncate it to zero bytes.

        secure_delete zeroes a deleted row in the page written by the deleting transaction,
        but the log still holds the older images of that page (the row as it was) until a
        checkpoint, and a checkpoint alone reuses the log without clearing it. TRUNCATE
        needs no reader to hold an older snapshot: our own reader waits on its lock, and no
        other process opens this file (mode 0600). The -shm file holds only the log's index
        (page numbers, checksums), never row data.
        """
        with self._read_lock:
            for _ in range(CHECKPOINT_TRIES):
                busy, _, _ = self._w.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                if not busy:
                    return
                time.sleep(CHECKPOINT_PAUSE_S)
        raise sqlite3.OperationalError("the write-ahead log could not be truncated (busy)")
