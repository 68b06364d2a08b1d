"""The task source of ``ctx.parallel_calls``: one task per child, its end known in advance.

The items (``(name, data)``) exist already, so the source reads them one ahead, synchronously:
a runner sees the next task, or that there is none, without holding any capacity. (An async
generator would have to be advanced under a unit of capacity just to learn that it has ended;
with every slot taken by other runs, a run whose last task had finished would wait its turn
for a unit only to find out it was done.) What must hold capacity still does: each child is
created, or found again, by its task, once the runner has admitted it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .._errors import EntityError, RunParked
from .._util import NOTHING, Nothing
from ..runners import Emitter, TaskSpec
from ..sources import PeekableSource
from ..store import EntityRecord, EntityStatus
from ._entity import CALLS, RunnableEntity
from ._spread import ChildWatch, SpreadChildTask

if TYPE_CHECKING:
    from ._context import RunContext


class ExistingChildren:
    """The children a parent had when its fan-out's first task looked: one query, shared by
    every task of the fan-out (a resumed run finds most of its children there)."""

    def __init__(self, ctx: RunContext) -> None:
        self._ctx = ctx
        self._records: dict[str, EntityRecord] | None = None
        self._lock = trio.Lock()

    async def find(self, name: str, cls: type[RunnableEntity]) -> EntityRecord | None:
        """The child named ``name`` as it was then, or ``None``.

        Raises:
            EntityError: it exists with another type than ``cls``.
        """
        # Every task goes through the lock, in the order the runner started them (trio's lock
        # is fair), even once the children are loaded: so they create their children in the
        # items' order, and a task admitted later cannot overtake those waiting for the load.
        async with self._lock:
            if self._records is None:
                children = await self._ctx.runtime.store.children(self._ctx.id)
                self._records = {record.name: record for record in children}
            record = self._records.get(name)
        if record is not None:
            check_child_type(self._ctx.entity, record, cls)
        return record


class ChildTasks(PeekableSource[TaskSpec[Any, Any]]):
    """``parallel_calls``' source: a :class:`~sluiceway.TaskSpec` per item, keyed by the
    child's name, in the items' order; a bad item, or a name given twice, ends it with that
    error after the tasks before it."""

    def __init__(
        self,
        ctx: RunContext,
        cls: type[RunnableEntity],
        items: Iterable[Any],
        edge_type: str,
        spread: bool,
    ) -> None:
        super().__init__()
        self._ctx = ctx
        self._cls = cls
        self._edge_type = edge_type
        self._items: Iterator[Any] = iter(items)
        self._existing = ExistingChildren(ctx)
        self._watch = ChildWatch(ctx) if spread else None
        self._seen: set[str] = set()
        self._next: TaskSpec[Any, Any] | Nothing = NOTHING
        self._ended = False
        self._failure: BaseException | None = None
        self._read_ahead()

    @property
    def failure(self) -> BaseException | None:
        """The error of the item that ended the source, if one did."""
        return self._failure

    def _read_ahead(self) -> None:
        """Make the next task (or find the end) now, so that peeking never changes the
        source's state: like a one-shot buffer, it is exhausted as soon as its last task is
        taken."""
        try:
            item = next(self._items)
            name, data = parse_item(item)
            if name in self._seen:
                raise ValueError(
                    f"parallel_calls got the name {name!r} twice; child names must be unique "
                    "under their parent"
                )
        except StopIteration:
            self._ended = True
            return
        except Exception as error:
            self._ended, self._failure = True, error
            return
        self._seen.add(name)
        task: Any
        if self._watch is None:
            task = ChildTask(self._ctx, self._existing, self._cls, name, data, self._edge_type)
        else:
            task = SpreadChildTask(
                self._ctx, self._watch, self._existing, self._cls, name, data, self._edge_type
            )
        self._next = TaskSpec(task, key=name)

    def _peek(self) -> TaskSpec[Any, Any] | Nothing:
        return self._next

    def _take(self) -> TaskSpec[Any, Any]:
        spec = self._next
        assert not isinstance(spec, Nothing)
        self._next = NOTHING
        self._read_ahead()
        return spec

    def _is_exhausted(self) -> bool:
        return self._ended and self._next is NOTHING

    def _on_receive_closed(self) -> None:
        self._next = NOTHING
        self._ended = True


@attrs.frozen(eq=False)
class ChildTask:
    """The task ``parallel_calls`` gives a runner for one child: create the child if it does
    not exist yet, then run it in the task, with the task's emitter as the capacity to give
    back while it waits."""

    ctx: RunContext
    existing: ExistingChildren
    cls: type[RunnableEntity]
    name: str
    data: dict[str, Any]
    edge_type: str = CALLS

    async def __call__(self, emit: Emitter[Any]) -> Any:
        runtime = self.ctx.runtime
        record = await self.existing.find(self.name, self.cls)
        if record is not None:
            if record.status is EntityStatus.COMPLETED:
                # Its stored result, at once: a resumed run skips its finished children
                # quickly (the runner checkpoints between tasks that do not block).
                return record.result
            if parked_not_due(record, runtime.clock()):
                # Still waiting (it wakes by itself): nothing to run, nothing to report.
                raise RunParked(f"{record.type} {record.name!r} ({record.id}) is parked")
            return await runtime._execute(record, holder=emit, fence=self.ctx.id)
        new = self.ctx._new_child(self.cls, self.name, self.data, self.edge_type)
        return await runtime._execute_new(self.cls, new, holder=emit)


def parked_not_due(record: EntityRecord, now: float) -> bool:
    """Whether a child is parked and its wake-up has not come (as of ``record``)."""
    return record.parked and (record.runnable_at is None or record.runnable_at > now)


def parse_item(item: object) -> tuple[str, dict[str, Any]]:
    """A ``parallel_calls`` item's name and data (from a ``(name, data)`` tuple or a
    ``{"name", "data"}`` mapping).

    Raises:
        TypeError, ValueError: the item has another shape, naming what is wrong.
    """
    if isinstance(item, Mapping):
        name = item.get("name")
        data = item.get("data")
        extra = set(item) - {"name", "data"}
        if extra:
            raise ValueError(
                f"a parallel_calls item has 'name' and 'data' only, got {sorted(extra)}"
            )
    elif isinstance(item, tuple) and len(item) == 2:
        name, data = item
    else:
        raise TypeError(
            f"parallel_calls items are (name, data) tuples or {{'name', 'data'}} mappings, "
            f"got {item!r}"
        )
    if not isinstance(name, str) or not name:
        raise TypeError(f"a child's name must be a non-empty string, got {name!r}")
    if data is not None and not isinstance(data, Mapping):
        raise TypeError(f"the data of child {name!r} must be a mapping, got {data!r}")
    return name, dict(data or {})


def check_child_type(
    parent: RunnableEntity, record: EntityRecord, cls: type[RunnableEntity]
) -> None:
    """Raise :class:`~sluiceway.EntityError` if ``parent``'s child ``record`` is not a
    ``cls``."""
    if record.type != cls.type_name:
        raise EntityError(
            f"{parent.type_name} {parent.name!r} already has a child named {record.name!r} of "
            f"type {record.type}, not {cls.type_name}"
        )
