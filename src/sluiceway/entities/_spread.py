"""Spread fan-outs: children handed to every runtime sharing the store, not run in the parent's
own process (``ctx.parallel_calls(..., spread=True)``).

Each child task creates its child, submits it (durably: the claim loop of any runtime that
knows its type takes it) and waits for it to end, holding its task's capacity meanwhile: the
capacity of the parent's runner is then how many children are in flight at once, across the
cluster. The waits of one parent share one :class:`ChildWatch`, which reads the children's
statuses once per change the runtime hears of (its own writes, the store's notifications) or
poll, not once per child. A task that has waited ``park_after`` seconds parks, as a parked
child does: once the runner has nothing else to do, the parent parks on its children and the
end of the last one wakes it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .._errors import EntityCancelledError, EntityFailedError, RunParked
from ..runners import Emitter
from ..store import EntityRecord, EntityStatus
from ._entity import CALLS, RunnableEntity

if TYPE_CHECKING:
    from ._child_tasks import ExistingChildren
    from ._context import RunContext


class ChildWatch:
    """The children of one running parent as last read, shared by its spread tasks."""

    def __init__(self, ctx: RunContext) -> None:
        self._ctx = ctx
        self._records: dict[str, EntityRecord] = {}
        self._lock = trio.Lock()
        self._read_for: tuple[trio.Event, int] | None = None

    async def current(self, child_id: str, changes: trio.Event) -> EntityRecord:
        """The child as read after ``changes`` (the runtime's change event when the caller
        last looked) was set, or after the last poll tick."""
        runtime = self._ctx.runtime
        tick = math.floor(trio.current_time() / runtime.poll_interval)
        async with self._lock:
            if self._read_for != (changes, tick) or child_id not in self._records:
                self._read_for = (changes, tick)
                children = await runtime.store.children(self._ctx.id)
                self._records = {record.id: record for record in children}
        return self._records[child_id]


@attrs.frozen
class SpreadChildTask:
    """The task ``parallel_calls(..., spread=True)`` gives a runner for one child (see the
    module documentation)."""

    ctx: RunContext
    watch: ChildWatch
    existing: ExistingChildren
    cls: type[RunnableEntity]
    name: str
    data: dict[str, Any]
    edge_type: str = CALLS

    async def __call__(self, emit: Emitter[Any]) -> Any:
        ctx = self.ctx
        runtime = ctx.runtime
        record = await self.existing.find(self.name, self.cls)
        if record is None:
            created = await ctx._create(
                self.cls, self.name, self.data, self.edge_type, strict=False
            )
            record = created.record
        if record.status is EntityStatus.COMPLETED:
            return record.result
        if record.status is EntityStatus.CANCELLED:
            raise EntityCancelledError(record.id, record.type, record.name)
        if record.runnable_at is None:
            # Not submitted yet (new, failed in an earlier run of this parent: it runs again,
            # as a child run inline does, or interrupted with an earlier run of this parent):
            # any runtime's claim loop takes it from now on.
            record = await runtime.store.submit(record.id, now=runtime.clock())
            runtime._work_due()
        since = trio.current_time()
        while True:
            changes = runtime._streams.changes
            record = await self.watch.current(record.id, changes)
            outcome = _ended(record)
            if outcome is not None:
                return outcome()
            pause = runtime.poll_interval
            if runtime.can_park:
                left = runtime.park_after - (trio.current_time() - since)
                if left <= 0:
                    raise RunParked(f"{record.type} {record.name!r} ({record.id}) runs elsewhere")
                pause = min(pause, left)
            with trio.move_on_after(pause):
                await changes.wait()


def _ended(record: EntityRecord) -> Any:
    """A function giving a child's outcome (its result, or raising its end) if it ended."""
    status = record.status
    if status is EntityStatus.COMPLETED:
        return lambda: record.result
    if status is EntityStatus.CANCELLED:

        def cancelled() -> Any:
            raise EntityCancelledError(record.id, record.type, record.name)

        return cancelled
    if status is EntityStatus.FAILED and record.runnable_at is None and record.lease_owner is None:

        def failed() -> Any:
            raise EntityFailedError(record.id, record.type, record.name, record.error or {})

        return failed
    return None
