"""Internal helpers whose behaviour the rules depend on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from sluiceway import CapacitySource, EnvelopeKind, Final, HierarchicalTaskPoolRunner
from sluiceway._util import aclose_after, open_owned_nursery


async def test_a_cancelled_close_never_replaces_the_real_error() -> None:
    async def close() -> None:
        await trio.sleep(1)  # a checkpoint on the error path, inside a cancelled scope

    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(KeyError, match="real"):
            await aclose_after(close, KeyError("real"))


async def test_a_clean_close_leaves_the_error_to_the_caller() -> None:
    closed: list[bool] = []

    async def close() -> None:
        closed.append(True)

    await aclose_after(close, KeyError("real"))
    assert closed == [True]


async def test_a_failing_close_keeps_both_errors() -> None:
    async def close() -> None:
        raise OSError("close failed")

    with pytest.raises(ExceptionGroup) as info:
        await aclose_after(close, KeyError("real"))
    assert [type(e) for e in info.value.exceptions] == [KeyError, OSError]


async def test_owned_nursery_raises_a_single_error_bare() -> None:
    async def fail() -> None:
        raise ValueError("only one")

    with pytest.raises(ValueError, match="only one"):
        async with open_owned_nursery() as nursery:
            nursery.start_soon(fail)
            await trio.sleep_forever()


async def test_streaming_task_stops_at_final_and_closes_the_generator() -> None:
    after_final: list[str] = []

    async def gen(emit: Any) -> AsyncIterator[Any]:
        try:
            yield "progress"
            yield Final("result")
            after_final.append("resumed")  # pragma: no cover - never pulled
            yield "too late"  # pragma: no cover
        finally:
            after_final.append("closed")

    runner = HierarchicalTaskPoolRunner("final", [gen], CapacitySource(1))
    async with runner.run_tasks() as envelopes:
        got = [(e.kind, e.value) async for e in envelopes]
    assert got == [(EnvelopeKind.INTERMEDIATE, "progress"), (EnvelopeKind.FINAL, "result")]
    assert after_final == ["closed"]
