"""Random frames against a real server: each gets exactly one well-formed response (with its
id when the id could be read), the server never crashes, and a well-behaved connection open at
the same time keeps working and misses nothing."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from trio_websocket import WebSocketConnection

from sluiceway.client import connect
from sluiceway.server import ErrorCode, ServerLimits
from tests.entities import workflows
from tests.server.conftest import TIMEOUT, Chatter, hello, make_app, open_raw, receive, serving

MAX_FRAME = 2048
LIMITS = ServerLimits(max_frame_bytes=MAX_FRAME)
CODES = {code.value for code in ErrorCode}
OPS = ["create", "start", "subscribe", "unsubscribe", "send_message", "cancel", "get", "tree"]
OPS += ["call", "ping"]
FIELDS = ["type", "data", "name", "exist_ok", "entity_id", "after_seq", "subtree"]
FIELDS += ["subscription", "message", "depth", "max_children", "endpoint", "body"]
#: Stands for the id of the real entity the fuzzing may aim at.
TARGET = "<target>"

#: Lone surrogates: JSON escapes them, UTF-8 cannot carry them.
SURROGATES = ["\ud800", "\udbff", "\udc00", "\udfff"]


def texts(min_size: int = 0, max_size: int = 8) -> st.SearchStrategy[str]:
    """Text, now and then with lone surrogates (``st.text`` never makes them)."""
    odd = st.characters() | st.sampled_from(SURROGATES)
    return st.text(min_size=min_size, max_size=max_size) | st.lists(
        odd, min_size=min_size, max_size=max_size
    ).map("".join)


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts(max_size=6), inner),
    max_leaves=8,
)
field_values = (
    json_values
    | st.just(TARGET)
    | st.sampled_from(["Leaf", "Chain", "Chatter", "Note", "Nope"])
    | st.sampled_from(["echo", "refuse", "boom", "no/such"])
    | st.integers(min_value=-2, max_value=3)
)
ids = st.integers() | texts(min_size=1, max_size=64)
#: Values of the right type for each field (most of the time), or anything.
typed: dict[str, st.SearchStrategy[Any]] = {
    "type": st.sampled_from(["Leaf", "Chain", "Chatter", "Note", "Nope"]) | texts(max_size=6),
    "data": st.dictionaries(texts(max_size=6), json_values, max_size=3),
    "name": st.none() | texts(max_size=8) | st.just("target"),
    "exist_ok": st.booleans(),
    "entity_id": st.just(TARGET) | texts(max_size=8),
    "after_seq": st.integers(min_value=0, max_value=20)
    | st.integers()
    | st.integers(min_value=2**62, max_value=2**66),
    "subtree": st.booleans(),
    "subscription": st.integers(min_value=0, max_value=4) | st.integers(),
    "message": texts(max_size=8),
    "depth": st.none() | st.integers(min_value=-1, max_value=3) | st.integers(),
    "max_children": st.integers(min_value=-1, max_value=5) | st.integers(),
    "endpoint": st.sampled_from(["echo", "refuse", "boom", "no/such"]) | texts(max_size=6),
    "body": st.dictionaries(texts(max_size=6), json_values, max_size=3),
}
FIELDS_OF = {
    "create": ["type", "data", "name", "exist_ok"],
    "start": ["entity_id"],
    "subscribe": ["entity_id", "after_seq", "subtree"],
    "unsubscribe": ["subscription"],
    "send_message": ["entity_id", "message", "data"],
    "cancel": ["entity_id"],
    "get": ["entity_id"],
    "tree": ["entity_id", "depth", "max_children"],
    "call": ["endpoint", "body"],
    "ping": [],
}
#: Requests that mostly reach their operation: v 1, a usable id, a known op, fields of the
#: op (each present or not, of its type or not) and now and then an unknown one.
REQUIRED = {"type", "entity_id", "subscription", "message", "endpoint"}
requests = st.sampled_from(OPS).flatmap(
    lambda op: st.fixed_dictionaries(
        {
            "v": st.just(1),
            "id": ids,
            "op": st.just(op),
            **{field: typed[field] for field in FIELDS_OF[op] if field in REQUIRED},
        },
        optional={field: typed[field] for field in FIELDS_OF[op] if field not in REQUIRED},
    )
)
odd_requests = st.sampled_from(OPS).flatmap(
    lambda op: st.fixed_dictionaries(
        {"v": st.just(1), "id": ids, "op": st.just(op)},
        optional={
            **{field: typed[field] | field_values for field in FIELDS_OF[op]},
            "extra": json_values,
        },
    )
)
#: Anything shaped like a request.
request_dicts = st.fixed_dictionaries(
    {},
    optional={
        "v": st.just(1) | json_values,
        "id": ids | json_values,
        "op": st.sampled_from(OPS) | texts(max_size=8) | json_values,
    },
).flatmap(
    lambda head: st.dictionaries(
        st.sampled_from(FIELDS) | texts(max_size=6), field_values, max_size=4
    ).map(lambda fields: {**fields, **head})
)
frames = st.one_of(
    requests.map(lambda d: ("json", d)),
    requests.map(lambda d: ("json", d)),
    odd_requests.map(lambda d: ("json", d)),
    request_dicts.map(lambda d: ("json", d)),
    json_values.map(lambda v: ("json", v)),
    st.text(max_size=40).map(lambda t: ("text", t)),  # a text frame is UTF-8
    st.integers(min_value=MAX_FRAME + 1, max_value=3 * MAX_FRAME).map(lambda n: ("big", n)),
    st.binary(max_size=40).map(lambda b: ("binary", b)),
)


def encode(kind: str, value: Any, target: str) -> str | bytes:
    if kind == "json":
        return json.dumps(_aim(value, target))
    if kind == "text":
        return str(value)
    if kind == "big":
        return json.dumps({"v": 1, "id": 1, "op": "ping", "pad": "x" * value})
    assert kind == "binary"
    return bytes(value)


def _aim(value: Any, target: str) -> Any:
    if value == TARGET:
        return target
    if isinstance(value, dict):
        return {key: _aim(item, target) for key, item in value.items()}
    return value


def expected_id(message: str | bytes) -> Any:
    """The id the response must carry, by the protocol's rules."""
    if isinstance(message, bytes) or len(message.encode("utf-8")) > MAX_FRAME:
        return None
    try:
        frame = json.loads(message)
    except (ValueError, RecursionError):
        return None
    if not isinstance(frame, dict):
        return None
    ident = frame.get("id")
    if isinstance(ident, bool) or not isinstance(ident, int | str):
        return None
    if isinstance(ident, str) and not 0 < len(ident) <= 64:
        return None
    return ident


def check_shape(response: dict[str, Any]) -> None:
    assert response["v"] == 1
    if response["ok"] is True:
        assert set(response) == {"v", "id", "ok", "result"}
        return
    assert response["ok"] is False
    assert set(response) == {"v", "id", "ok", "error"}
    error = response["error"]
    assert set(error) <= {"code", "message", "details"}
    assert error["code"] in CODES
    assert isinstance(error["message"], str)


async def answers(ws: WebSocketConnection, sentinel: str) -> list[dict[str, Any]]:
    """The responses (events skipped) up to the sentinel ping's, which is left out, plus any
    that come after it until one response besides it was seen."""
    got: list[dict[str, Any]] = []
    sentinel_seen = False
    while not (sentinel_seen and got):
        frame = await receive(ws)
        if "event" in frame:
            assert frame["event"] in ("envelope", "end")
            continue
        if frame.get("id") == sentinel and frame.get("result") == {"pong": True}:
            sentinel_seen = True
            continue
        got.append(frame)
    return got


async def fuzz(path: Path, sent: list[tuple[str, Any]]) -> None:
    workflows.GATES.clear()
    app = make_app()
    for blocking in ("gate", "fanout/create"):  # they wait, or run as much as asked
        del app.endpoints[blocking]
    with trio.fail_after(TIMEOUT):
        async with serving(path, limits=LIMITS, app=app) as served:
            target = (await served.runtime.create("Leaf", {"value": 1}, name="target")).id
            chatter = await served.runtime.create(
                Chatter, {"count": 12, "pause_after": 4}, name="chatter"
            )
            async with connect(served.url) as good, open_raw(served.url) as ws:
                await hello(ws)
                async with good.subscribe(chatter.id) as subscription:
                    await good.start(chatter.id)
                    followed = [await anext(subscription) for _ in range(5)]

                    for n, (kind, value) in enumerate(sent):
                        message = encode(kind, value, target)
                        await ws.send_message(message)
                        sentinel = f"sentinel-{n}"
                        await ws.send_message(json.dumps({"v": 1, "id": sentinel, "op": "ping"}))
                        (response,) = await answers(ws, sentinel)
                        check_shape(response)
                        assert response["id"] == expected_id(message), (message, response)
                        if (
                            response["ok"] is False
                            and response["error"]["code"] == "internal_error"
                        ):
                            assert '"boom"' in str(message), (message, response)

                    # The fuzzed connection still works, and so does the good one, which
                    # gets every envelope of its run.
                    await ws.send_message(json.dumps({"v": 1, "id": "last", "op": "ping"}))
                    while (frame := await receive(ws)).get("id") != "last":
                        assert "event" in frame, frame
                    assert await good.request("ping") == {"pong": True}
                    workflows.GATES.setdefault("chatter", trio.Event()).set()
                    followed += [envelope async for envelope in subscription]
                assert subscription.status == "COMPLETED"
                assert followed == await served.runtime.envelopes(chatter.id)


_examples = itertools.count()


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(sent=st.lists(frames, min_size=1, max_size=8))
def test_random_frames(tmp_path: Path, sent: list[tuple[str, Any]]) -> None:
    trio.run(fuzz, tmp_path / f"fuzz-{next(_examples)}.db", sent)
