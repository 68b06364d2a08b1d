"""Answers of the read operations a page polls (``tree``, ``list``), shared by every
connection for a moment.

Fifty pages following one run each ask for its tree every second: without sharing, the store
would answer fifty times the same question. A :class:`ReadCache` answers requests for the same
thing within ``ttl`` seconds with one computation (those that come while it is under way wait
for it), so the store's load stays that of one page, however many are open. A write the server
makes (a cancel, a message, a start) clears it: a page that acts sees the result of its action
at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import attrs
import trio

#: How many answers are kept at most (the oldest are dropped first).
MAX_ENTRIES = 1024


@attrs.define(eq=False)
class _Entry:
    at: float
    done: trio.Event = attrs.field(factory=trio.Event)
    value: Any = None
    failed: bool = False


class ReadCache:
    """Shares the answer of ``compute()`` for a key among the requests of ``ttl`` seconds."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[Hashable, _Entry] = {}
        #: How many answers were computed, and how many were shared (for the tests and stats).
        self.computed = 0
        self.shared = 0

    async def get(self, key: Hashable, compute: Callable[[], Awaitable[Any]]) -> Any:
        """The answer for ``key``: a fresh enough one, the one under way, or a new one."""
        entry = self._entries.get(key)
        if entry is not None:
            if not entry.done.is_set():
                # Asked while it was being computed: its answer is fresh for this request,
                # however long it took (else every waiter of a slow answer would compute it
                # again).
                await entry.done.wait()
                if not entry.failed:
                    self.shared += 1
                    return entry.value
            elif not entry.failed and trio.current_time() - entry.at <= self.ttl:
                self.shared += 1
                return entry.value
        entry = _Entry(trio.current_time())
        self._entries[key] = entry
        self._prune()
        try:
            entry.value = await compute()
            entry.at = trio.current_time()  # its age counts from when it was known
        except BaseException:
            # Nobody shares a failure (nor a cancelled computation): each asks again.
            entry.failed = True
            if self._entries.get(key) is entry:
                del self._entries[key]
            raise
        finally:
            entry.done.set()
        self.computed += 1
        return entry.value

    def clear(self) -> None:
        """Forget every answer (after a write)."""
        self._entries.clear()

    def _prune(self) -> None:
        while len(self._entries) > MAX_ENTRIES:
            del self._entries[next(iter(self._entries))]
