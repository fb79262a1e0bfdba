"""What the daemon keeps on disk after each attempt, in order: state.json, then the history.

Both live in the state directory, so they share one file system. `state.json` (the counters,
the last result) must always fit; the history is the one that gives way.
Every failure is one structured event; nothing here raises.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable

import structlog

from usagestatsd.store.history import History, Record
from usagestatsd.store.state import State, StateStore

log = structlog.get_logger()


class Keeper:
    """Saves state.json first, appends to the history after, and makes room for the state."""

    def __init__(self, store: StateStore, history: History) -> None:
        self.store = store
        self.history = history

    def save(self, state: State, now_ms: int) -> bool:
        """Save state.json; on a full file system the history gives way once. True if saved."""
        try:
            self.store.save(state)
            return True
        except OSError as exc:
            problem = exc
        if problem.errno in (errno.ENOSPC, errno.EDQUOT):
            try:
                dropped = self.history.give_way(self.history.reserve_bytes, now_ms)
                log.warning("history.gave_way", path=str(self.history.path), dropped=dropped)
                self.store.save(state)
                return True
            except OSError as again:
                problem = again
        log.warning(
            "state.write_failed",
            path=str(self.store.path),
            problem=problem.strerror or str(problem),
        )
        return False

    def record(self, records: Iterable[Record], now_ms: int) -> None:
        """Append to the history, which drops its oldest records rather than fill the disk."""
        try:
            dropped = self.history.append(records, now_ms)
        except OSError as exc:
            log.warning(
                "history.write_failed",
                path=str(self.history.path),
                problem=exc.strerror or str(exc),
            )
            return
        if dropped:
            log.warning("history.gave_way", path=str(self.history.path), dropped=dropped)
