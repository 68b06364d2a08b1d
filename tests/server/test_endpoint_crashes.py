"""Endpoints that raise a ``BaseException`` (``SystemExit``, ``KeyboardInterrupt``, a class of
their own, a group of them): the caller gets an ``internal_error`` response, the traceback is
logged, and the server goes on serving everyone. Cancellation still goes through: a request
whose client leaves is stopped, not answered."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from sluiceway.server import Application, EndpointContext
from tests.entities import workflows
from tests.server.conftest import (
    TIMEOUT,
    TYPES,
    call,
    error,
    frame,
    hello,
    make_app,
    open_raw,
    serving,
)


class Doom(BaseException):
    """A BaseException of the application's own."""


class Exiting(dict[str, Any]):
    """A result whose encoding raises SystemExit (``json`` calls ``items()`` of a subclass)."""

    def items(self) -> Any:
        raise SystemExit("while encoding")


def crashing_app() -> Application:
    """The tests' application plus endpoints that raise what should never leave a task."""
    app = make_app()

    @app.endpoint("exit")
    async def exit_(ctx: EndpointContext, body: dict[str, Any]) -> Any:
        await trio.lowlevel.checkpoint()
        raise SystemExit(3)

    @app.endpoint("interrupt")
    async def interrupt(ctx: EndpointContext, body: dict[str, Any]) -> Any:
        await trio.lowlevel.checkpoint()
        raise KeyboardInterrupt

    @app.endpoint("doom")
    async def doom(ctx: EndpointContext, body: dict[str, Any]) -> Any:
        await trio.lowlevel.checkpoint()
        raise Doom("the secret plan")

    @app.endpoint("group")
    async def group(ctx: EndpointContext, body: dict[str, Any]) -> Any:
        async def child() -> None:
            await trio.lowlevel.checkpoint()
            raise SystemExit("from a child")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(child)
            await trio.sleep_forever()

    @app.endpoint("exiting-result")
    async def exiting_result(ctx: EndpointContext, body: dict[str, Any]) -> Any:
        await trio.lowlevel.checkpoint()
        return Exiting(a=1)

    @app.endpoint("hang")
    async def hang(ctx: EndpointContext, body: dict[str, Any]) -> Any:
        workflows.GATES.setdefault("hanging", trio.Event()).set()
        await trio.sleep_forever()

    return app


CRASHES = [("exit", "SystemExit"), ("interrupt", "KeyboardInterrupt"), ("doom", "Doom")]
CRASHES += [("group", "BaseExceptionGroup")]


@pytest.mark.parametrize(("endpoint", "kind"), CRASHES)
async def test_an_endpoint_raising_a_base_exception_gets_internal_error(
    db: Path, caplog: pytest.LogCaptureFixture, endpoint: str, kind: str
) -> None:
    with trio.fail_after(TIMEOUT):
        async with serving(db, app=crashing_app()) as served:
            async with open_raw(served.url) as bystander, open_raw(served.url) as ws:
                await hello(bystander)
                await hello(ws)
                # The bystander has a subscription and a request in progress meanwhile.
                leaf = await call(bystander, "create", 1, type="Leaf", data={"value": 1})
                await call(bystander, "subscribe", 2, entity_id=leaf["id"])
                body = await error(ws, frame("call", "crash", endpoint=endpoint), "crash")
                assert body == {
                    "code": "internal_error",
                    "message": f"the server failed to answer: {kind}",
                }
                # The same connection goes on.
                assert await call(ws, "ping", 2) == {"pong": True}
                assert await call(ws, "call", 3, endpoint="echo", body={"a": 1}) == {
                    "body": {"a": 1},
                    "state": "state",
                }
                # The other client is unaffected.
                assert await call(bystander, "ping", 3) == {"pong": True}
                assert (await call(bystander, "start", 4, entity_id=leaf["id"]))["state"] in (
                    "started",
                    "running",
                )
                assert (await call(bystander, "get", 5, entity_id=leaf["id"]))["id"] == leaf["id"]
            # New clients are served.
            async with open_raw(served.url) as later:
                await hello(later)
                assert await call(later, "ping", 1) == {"pong": True}
    logged = [r for r in caplog.records if r.name == "sluiceway.server" and r.exc_info]
    assert len(logged) == 1
    record = logged[0]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None
    assert type(record.exc_info[1]).__name__ == kind
    assert endpoint in record.getMessage()


async def test_a_result_whose_encoding_raises_system_exit(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The server encodes the endpoint's result after the endpoint returned: a
    BaseException there is the endpoint's bug too."""
    with trio.fail_after(TIMEOUT):
        async with serving(db, app=crashing_app()) as served, open_raw(served.url) as ws:
            await hello(ws)
            body = await error(ws, frame("call", 1, endpoint="exiting-result"), 1)
            assert body == {
                "code": "internal_error",
                "message": "the server could not encode its response: SystemExit",
            }
            assert await call(ws, "ping", 2) == {"pong": True}
    assert "SystemExit" in caplog.text


async def test_cancellation_still_stops_a_request(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A request in progress when its client leaves is cancelled, not turned into an error;
    so is one in progress when the server shuts down."""
    with trio.fail_after(TIMEOUT):
        async with serving(db, app=crashing_app()) as served:
            async with open_raw(served.url) as ws:
                await hello(ws)
                await ws.send_message(frame("call", 1, endpoint="hang"))
                await workflows.GATES.setdefault("hanging", trio.Event()).wait()
            await served.server._no_connections.wait()  # its requests were stopped
            workflows.GATES.pop("hanging")
            async with open_raw(served.url) as ws:
                await hello(ws)
                await ws.send_message(frame("call", 2, endpoint="hang"))
                await workflows.GATES.setdefault("hanging", trio.Event()).wait()
                served.server.shutdown()
                with pytest.raises(Exception, match="1001"):
                    while True:
                        got = await ws.get_message()
                        assert '"id":2' not in str(got), got
    assert not [r for r in caplog.records if r.name == "sluiceway.server" and r.exc_info]


async def test_a_real_ctrl_c_during_an_endpoint_still_interrupts(db: Path) -> None:
    """A KeyboardInterrupt trio delivers for a real SIGINT, which can land in an endpoint's
    code, is not mistaken for the endpoint's own: it stops the program."""
    app = Application("ctrl-c", types=TYPES)

    @app.endpoint("spin")
    async def spin(ctx: EndpointContext, body: dict[str, Any]) -> Any:
        await trio.lowlevel.checkpoint()
        os.kill(os.getpid(), signal.SIGINT)
        while True:  # the signal arrives in this loop, between two bytecodes
            pass

    handler = signal.getsignal(signal.SIGINT)
    if not getattr(handler, "__module__", "").startswith("trio"):
        pytest.skip("trio delivers SIGINT as KeyboardInterrupt only under its own handler")
    interrupted: list[BaseException] = []
    try:
        with trio.fail_after(TIMEOUT):
            async with serving(db, app=app) as served, open_raw(served.url) as ws:
                await hello(ws)
                await ws.send_message(frame("call", 1, endpoint="spin"))
                await trio.sleep_forever()
    except BaseException as exc:  # a KeyboardInterrupt, maybe inside groups
        interrupted.append(exc)
    assert interrupted
    caught = interrupted[0]
    if isinstance(caught, BaseExceptionGroup):
        assert caught.subgroup(KeyboardInterrupt) is not None, caught
    else:
        assert isinstance(caught, KeyboardInterrupt), caught
