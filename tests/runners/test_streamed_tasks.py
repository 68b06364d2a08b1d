"""Tasks that give an async iterator (``return entity.start()``): streamed, not returned.

Each item becomes an INTERMEDIATE envelope through the emitter (with backpressure); the final
value is the first ``Final(value)`` item, else ``StopAsyncIteration(value)``, else the last item
(None if none); the iterator is closed however the task ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from sluiceway import (
    CapacitySource,
    EnvelopeKind,
    Final,
    HierarchicalTaskPoolRunner,
    ResourceCapacitySource,
    RunParked,
    ScheduledTask,
    ScheduledTaskPoolRunner,
    TaskCancelledError,
    TaskEnvelope,
    TaskSpec,
    TaskTimeoutError,
)
from sluiceway.runners import _tasks as tasks_module
from sluiceway.runners import _workers as workers_module
from tests.helpers import assert_idle

Envelope = TaskEnvelope[Any, Any]


class Boom(Exception):
    pass


class Child:
    """Stands for an entity: ``start()`` is an async generator of its progress."""

    def __init__(self, items: list[Any], *, cleanup_seconds: float = 0) -> None:
        self.items = items
        self.pulled: list[Any] = []
        self.closed = False  # its finally: ran
        self.cleaned = False  # its finally: completed an async cleanup
        self.cleanup_seconds = cleanup_seconds

    async def start(self) -> AsyncIterator[Any]:
        try:
            for item in self.items:
                if isinstance(item, BaseException):
                    raise item
                if item == "wait":
                    await trio.sleep(1)
                    continue
                self.pulled.append(item)
                yield item
        finally:
            self.closed = True
            if self.cleanup_seconds:
                await trio.sleep(self.cleanup_seconds)  # an async cleanup
                self.cleaned = True


def by_coroutine(child: Child, key: Any = None) -> TaskSpec[Any, Any]:
    """The original's pattern: ``async () => entity.start()``."""

    async def task(emit: Any) -> Any:
        await trio.lowlevel.checkpoint()  # e.g. create or load the child
        return child.start()

    return TaskSpec(task, key=key)


def directly(child: Child, key: Any = None) -> TaskSpec[Any, Any]:
    def task(emit: Any) -> Any:
        return child.start()

    return TaskSpec(task, key=key)


async def run(runner: Any) -> list[Envelope]:
    async with runner.run_tasks() as envelopes:
        return [envelope async for envelope in envelopes]


def kinds(envelopes: list[Envelope]) -> list[tuple[str, Any]]:
    return [(e.kind.name, e.error if e.kind is EnvelopeKind.ERROR else e.value) for e in envelopes]


@pytest.mark.parametrize("shape", [by_coroutine, directly])
async def test_a_final_item_is_the_final_value_and_stops_the_pulling(
    autojump_clock: object, shape: Any
) -> None:
    child = Child(["drafting", "wait", "illustrating", Final({"pages": 12}), "never pulled"])
    cap = CapacitySource(1)
    envelopes = await run(HierarchicalTaskPoolRunner("r", [shape(child)], cap))
    assert kinds(envelopes) == [
        ("INTERMEDIATE", "drafting"),
        ("INTERMEDIATE", "illustrating"),
        ("FINAL", {"pages": 12}),
    ]
    assert "never pulled" not in child.pulled
    assert child.closed
    assert_idle(cap)


@pytest.mark.parametrize("shape", [by_coroutine, directly])
@pytest.mark.parametrize(
    ("items", "final"), [([1, 2, 3], 3), ([], None), (["only"], "only"), ([None, 0], 0)]
)
async def test_without_final_the_last_item_is_the_final_value(
    autojump_clock: object, shape: Any, items: list[Any], final: Any
) -> None:
    child = Child(items)
    envelopes = await run(HierarchicalTaskPoolRunner("r", [shape(child)], CapacitySource(1)))
    assert kinds(envelopes) == [("INTERMEDIATE", item) for item in items] + [("FINAL", final)]
    assert child.closed


async def test_a_coroutine_returning_an_iterable_or_a_hand_written_iterator(
    autojump_clock: object,
) -> None:
    class Countdown:
        def __init__(self) -> None:
            self.n = 3

        def __aiter__(self) -> Countdown:
            return self

        async def __anext__(self) -> int:
            if self.n == 0:
                raise StopAsyncIteration("liftoff")
            self.n -= 1
            return self.n

    class Pages:  # an async iterable, not an iterator
        def __aiter__(self) -> AsyncIterator[str]:
            return Child(["p1", "p2"]).start()

    async def countdown(emit: Any) -> Countdown:
        return Countdown()

    async def pages(emit: Any) -> Pages:
        return Pages()

    runner = HierarchicalTaskPoolRunner(
        "r", [TaskSpec(countdown, key="c"), TaskSpec(pages, key="p")], CapacitySource(1)
    )
    envelopes = await run(runner)
    assert [e.value for e in envelopes if e.key == "c"] == [2, 1, 0, "liftoff"]
    assert [e.value for e in envelopes if e.key == "p"] == ["p1", "p2", "p2"]


async def test_a_scheduled_task_returning_a_generator_from_its_coroutine(
    autojump_clock: object,
) -> None:
    pool = ResourceCapacitySource({"slots": 2})
    done: list[tuple[Any, Any]] = []
    child = Child(["a", Final("result")])

    async def task(emit: Any) -> Any:
        return child.start()

    runner = ScheduledTaskPoolRunner(
        "s",
        [ScheduledTask("k", task, on_complete=lambda key, value: done.append((key, value)))],
        pool,
        default_cost={"slots": 1},
    )
    envelopes = await run(runner)
    assert kinds(envelopes) == [("INTERMEDIATE", "a"), ("FINAL", "result")]
    assert done == [("k", "result")]  # the callback gets the streamed final value
    assert_idle(pool)


async def test_items_go_through_the_emitter_with_backpressure(autojump_clock: object) -> None:
    produced = 0

    async def many() -> AsyncIterator[int]:
        nonlocal produced
        for i in range(20):
            produced += 1
            yield i

    async def task(emit: Any) -> Any:
        return many()

    runner = HierarchicalTaskPoolRunner("bp", [task], CapacitySource(1), buffer_size=2)
    consumed = 0
    async with runner.run_tasks() as envelopes:
        async for envelope in envelopes:
            consumed += 1
            # The generator is not pulled ahead of what the buffer can hold.
            assert produced - consumed <= 3
            await trio.sleep(1)
            if envelope.is_final:
                assert envelope.value == 19
    assert consumed == 21
    # buffer_size, plus the final envelope a finishing task deposits without waiting
    assert runner.statistics().peak_buffered_envelopes <= 3


async def test_an_error_raised_by_the_iterator_is_the_task_error(autojump_clock: object) -> None:
    child = Child(["one", Boom("stream broke")])
    envelopes = await run(HierarchicalTaskPoolRunner("e", [by_coroutine(child)], CapacitySource(1)))
    assert [e.kind.name for e in envelopes] == ["INTERMEDIATE", "ERROR"]
    assert isinstance(envelopes[-1].error, Boom)
    assert child.closed


async def test_an_error_raised_while_closing_is_the_task_error(autojump_clock: object) -> None:
    async def fails_on_close() -> AsyncIterator[Any]:
        try:
            yield "one"
            yield Final("done")
        finally:
            raise Boom("cleanup failed")

    async def task(emit: Any) -> Any:
        return fails_on_close()

    envelopes = await run(HierarchicalTaskPoolRunner("c", [task], CapacitySource(1)))
    assert [e.kind.name for e in envelopes] == ["INTERMEDIATE", "ERROR"]
    assert isinstance(envelopes[-1].error, Boom)


@pytest.mark.parametrize("how", ["cancel", "timeout", "leave", "stop_on_error"])
async def test_the_iterator_is_closed_however_the_task_ends(
    autojump_clock: object, how: str
) -> None:
    # Interrupted during a pull, the generator gets Cancelled inside it, as any trio code.
    child = Child(["one", "wait", "wait", "wait", "two"])

    async def fails(emit: Any) -> None:
        await trio.sleep(1.5)
        raise Boom("another task failed")

    tasks: list[Any] = [by_coroutine(child, key="child")]
    if how == "stop_on_error":
        tasks.append(fails)
    cap = CapacitySource(2)
    runner = HierarchicalTaskPoolRunner("close", tasks, cap, task_timeout=2.5)
    seen: list[Envelope] = []
    with trio.fail_after(100):
        try:
            async with runner.run_tasks(stop_on_error=how == "stop_on_error") as envelopes:
                async for envelope in envelopes:
                    seen.append(envelope)
                    if how == "cancel" and len(seen) == 1:
                        await trio.sleep(1)
                        assert runner.cancel(key="child") == 1
                    elif how == "leave":
                        break
        except Boom:
            assert how == "stop_on_error"
    assert child.closed
    assert "two" not in child.pulled
    if how == "cancel":
        assert isinstance(seen[-1].error, TaskCancelledError)
    elif how == "timeout":
        assert isinstance(seen[-1].error, TaskTimeoutError)
    assert_idle(cap)


async def test_a_stream_that_parks_is_parked_and_closed(autojump_clock: object) -> None:
    child = Child(["one", RunParked("waits for a message")])
    with pytest.raises(RunParked) as caught:
        await run(
            HierarchicalTaskPoolRunner("p", [by_coroutine(child, key="child")], CapacitySource(1))
        )
    assert caught.value.keys == ("child",)
    assert child.closed


async def test_a_coroutine_returning_other_values_is_unchanged(autojump_clock: object) -> None:
    async def plain(emit: Any) -> list[int]:
        return [1, 2]  # a sync iterable is a value, not a stream

    envelopes = await run(HierarchicalTaskPoolRunner("v", [plain], CapacitySource(1)))
    assert kinds(envelopes) == [("FINAL", [1, 2])]


@pytest.mark.parametrize("how", ["cancel", "timeout", "leave"])
async def test_an_iterator_suspended_at_a_yield_completes_its_async_cleanup(
    autojump_clock: object, how: str
) -> None:
    """Interrupted while it waits in emit (the buffer is full), the task closes its iterator
    itself: shielded, so the generator's finally: can await its cleanup to the end."""
    child = Child(["one", "two", "three"], cleanup_seconds=0.5)
    cap = CapacitySource(1)
    runner = HierarchicalTaskPoolRunner(
        "suspended", [by_coroutine(child, key="child")], cap, buffer_size=1, task_timeout=3
    )
    with trio.fail_after(100):
        async with runner.run_tasks() as envelopes:
            await trio.sleep(1)  # "one" fills the buffer: the task waits in emit("two")
            assert child.pulled == ["one", "two"]
            if how == "cancel":
                runner.cancel(key="child")
            elif how == "timeout":
                await trio.sleep(5)
            if how != "leave":
                assert [e.kind.name async for e in envelopes] == ["INTERMEDIATE", "ERROR"]
    assert child.closed
    assert child.cleaned
    assert_idle(cap)


async def test_the_answer_per_type_is_kept_and_bounded(
    autojump_clock: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether a returned value is streamed is decided per type and remembered; the memory is
    bounded (a program making classes on the fly does not grow it), and a type asked again
    after it was forgotten gets the same answer."""
    monkeypatch.setattr(tasks_module, "_STREAM_TYPES_MAX", 3)
    monkeypatch.setattr(tasks_module, "STREAM_TYPES", {})
    monkeypatch.setattr(workers_module, "STREAM_TYPES", tasks_module.STREAM_TYPES)

    class Countdown:
        def __aiter__(self) -> AsyncIterator[int]:
            return Child([1, Final(0)]).start()

    plain_types = [type(f"Plain{i}", (), {}) for i in range(5)]
    values: list[Any] = [Countdown(), *(kind() for kind in plain_types), Countdown(), 7, "x"]

    def task_of(value: Any) -> Any:
        async def task(emit: Any) -> Any:
            return value

        return task

    runner = HierarchicalTaskPoolRunner(
        "r",
        [TaskSpec(task_of(value), key=i) for i, value in enumerate(values)],
        CapacitySource(1),
    )
    envelopes = await run(runner)
    finals = {e.key: e.value for e in envelopes if e.kind is EnvelopeKind.FINAL}
    assert finals[0] == 0
    assert finals[6] == 0
    assert [finals[i] for i in range(1, 6)] == values[1:6]  # returned as they are
    assert (finals[7], finals[8]) == (7, "x")
    assert len(tasks_module.STREAM_TYPES) <= 3
    assert tasks_module.is_stream_type(Countdown)
    assert not tasks_module.is_stream_type(int)
