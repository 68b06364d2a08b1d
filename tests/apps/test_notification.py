"""The notification service over real HTTP: a hypercorn server on 127.0.0.1:0 per test, httpx."""

from __future__ import annotations

import base64
import contextlib
import json
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from sluiceway.apps.notification import Faults, NotificationService, serve_notifications
from tests.apps.service_helpers import (
    check_common_routes,
    checked_stats,
    client_of,
    error_of,
    expect_quiet_logs,
    hidden_and_logged,
    post_at_once,
    post_bodies_that_are_not_json,
    refused_settings,
    seeded_statuses,
    served,
    serving_module,
    set_faults,
    totals,
    validation_error,
)

LIMIT = 64 * 1024  # max_body_bytes of the test servers


def email(key: object = "campaign-c1-contact-1", **changes: Any) -> dict[str, Any]:
    """A valid POST /send/email body (seed 000's shape), with ``changes`` applied; a change to
    ``None`` removes the field."""
    body: dict[str, Any] = {
        "idempotencyKey": key,
        "to": ["ada@example.com"],
        "subject": "Hello Ada",
        "html": "<p>Hi</p>",
        "from": "actor-42",
        "metadata": {"campaign_id": "c1", "contact_id": "contact-1"},
    }
    body.update(changes)
    return {name: value for name, value in body.items() if value is not None}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "notifications.db"


@pytest.fixture
async def client(nursery: trio.Nursery, db: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(nursery, partial(serve_notifications, db, max_body_bytes=LIMIT)) as client:
        yield client


async def stats(client: httpx.AsyncClient) -> dict[str, int]:
    """``GET /stats``: every POST /send/email counted once, by its outcome."""
    return await checked_stats(client, "sends")


async def wait_for_stats(
    client: httpx.AsyncClient, predicate: Callable[[dict[str, int]], bool]
) -> dict[str, int]:
    with trio.fail_after(5):  # a safety net, not a timing assertion
        while True:
            current: dict[str, int] = (await client.get("/stats")).json()
            if predicate(current):
                return current
            await trio.sleep(0.005)


# -- sending and idempotency -------------------------------------------------------------------


async def test_new_key_is_202_and_a_repeat_is_200_with_the_stored_result(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    first = await client.post("/send/email", json=email())
    assert first.status_code == 202
    result = first.json()
    assert result["status"] == "accepted"
    assert result["channel"] == "email"
    assert result["provider"] == "local"
    assert result["idempotencyKey"] == "campaign-c1-contact-1"
    assert result["to"] == ["ada@example.com"]
    assert result["providerMessageId"]
    assert result["timestamp"].endswith("Z")
    assert set(result) == {
        "id",
        "providerMessageId",
        "status",
        "channel",
        "provider",
        "timestamp",
        "idempotencyKey",
        "to",
    }
    assert first.headers["location"] == f"/notifications/{result['id']}"

    # Whatever else the body says, a repeated key gets the stored result and sends nothing.
    again = await client.post(
        "/send/email", json=email(subject="Other", to=["bob@example.com"], html=None, text="x")
    )
    assert again.status_code == 200
    assert again.json() == result

    fetched = await client.get(f"/notifications/{result['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == result
    assert await stats(client) == totals(sends=1, requests=2, repeats=1)


async def test_fifty_concurrent_requests_with_one_key_send_once(
    client: httpx.AsyncClient,
) -> None:
    # A little latency widens the window between "is the key known?" and "record the send".
    await set_faults(client, latency=0.01)
    responses = await post_at_once(client, "/send/email", email("campaign-c1-dup"), times=50)
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 49 + [202]
    assert len({r.json()["id"] for r in responses}) == 1
    assert await stats(client) == totals(sends=1, requests=50, repeats=49)


async def test_concurrent_keys_each_send_once(client: httpx.AsyncClient) -> None:
    await set_faults(client, latency=0.005, jitter=0.005, seed=1)
    ids: dict[str, set[str]] = {}

    async def post(key: str) -> None:
        response = await client.post("/send/email", json=email(key))
        assert response.status_code in (200, 202)
        ids.setdefault(key, set()).add(response.json()["id"])

    async with trio.open_nursery() as nursery:
        for n in range(20):
            for _ in range(3):
                nursery.start_soon(post, f"campaign-c2-contact-{n}")

    assert all(len(found) == 1 for found in ids.values())
    assert len(ids) == 20
    assert await stats(client) == totals(sends=20, requests=60, repeats=40)


async def test_two_services_on_one_file_send_a_key_once(db: Path) -> None:
    # The per-process key lock cannot see the other process: the table's primary key decides.
    faults = Faults(latency=0.01)
    async with trio.open_nursery() as nursery:
        urls = [
            await nursery.start(partial(serve_notifications, db, faults=faults)) for _ in range(2)
        ]
        async with httpx.AsyncClient(timeout=10) as client:
            body = email("campaign-shared")
            responses = await post_at_once(client, "/send/email", body, times=10, urls=urls)
            assert sorted(r.status_code for r in responses) == [200] * 19 + [202]
            assert len({r.json()["id"] for r in responses}) == 1
            assert (await client.get(f"{urls[0]}/stats")).json()["sends"] == 1
        nursery.cancel_scope.cancel()


async def test_state_survives_a_restart(db: Path) -> None:
    async with served(NotificationService(db)) as client:
        first = await client.post("/send/email", json=email("campaign-c3-contact-1"))
    assert first.status_code == 202

    async with served(NotificationService(db)) as client:
        again = await client.post("/send/email", json=email("campaign-c3-contact-1"))
        assert again.status_code == 200
        assert again.json() == first.json()
        fetched = await client.get(f"/notifications/{first.json()['id']}")
        assert fetched.json() == first.json()
        assert await stats(client) == totals(sends=1, requests=2, repeats=1)


async def test_limits_are_inclusive(client: httpx.AsyncClient) -> None:
    attachment = {
        "name": "a.txt",
        "contentType": "text/plain; charset=utf-8",
        "contentBase64": base64.b64encode(b"hello").decode(),
    }
    body = email(
        "k" * 256,
        to=[f"r{n}@example.com" for n in range(50)],
        cc=[f"c{n}@example.com" for n in range(50)],
        bcc=["b@example.com"],
        replyTo="reply@example.com",
        text="plain",
        attachments=[attachment] * 10,
        correlationId="corr-1",
    )
    response = await client.post("/send/email", json=body)
    assert response.status_code == 202, response.text
    assert len(response.json()["to"]) == 50


# -- validation and malformed requests ---------------------------------------------------------

INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("missing key", email(idempotencyKey=None), "idempotencyKey"),
    ("empty key", email(""), "idempotencyKey"),
    ("long key", email("k" * 257), "idempotencyKey"),
    ("numeric key", email(7), "idempotencyKey"),
    ("missing to", email(to=None), "to"),
    ("empty to", email(to=[]), "to"),
    ("to not a list", email(to="ada@example.com"), "to"),
    ("bad address", email(to=["ada@example.com", "not-an-email"]), "to[1]"),
    ("too many to", email(to=[f"r{n}@example.com" for n in range(51)]), "to"),
    ("missing subject", email(subject=None), "subject"),
    ("empty subject", email(subject=""), "subject"),
    ("no body text", email(html=None), "html|text"),
    ("empty body texts", email(html="", text=""), "html|text"),
    ("html not a string", email(html=["<p>"]), "html"),
    ("empty from", email(**{"from": ""}), "from"),
    ("bad replyTo", email(replyTo="nobody"), "replyTo"),
    ("bad cc", email(cc=["x"]), "cc[0]"),
    ("too many bcc", email(bcc=[f"b{n}@example.com" for n in range(51)]), "bcc"),
    ("attachments not a list", email(attachments={"name": "a"}), "attachments"),
    (
        "too many attachments",
        email(attachments=[{"name": "a", "contentType": "text/plain", "contentBase64": ""}] * 11),
        "attachments",
    ),
    (
        "attachment not base64",
        email(attachments=[{"name": "a", "contentType": "text/plain", "contentBase64": "!!"}]),
        "attachments[0].contentBase64",
    ),
    (
        "attachment without name",
        email(attachments=[{"contentType": "text/plain", "contentBase64": ""}]),
        "attachments[0].name",
    ),
    (
        "attachment bad type",
        email(attachments=[{"name": "a", "contentType": "text", "contentBase64": ""}]),
        "attachments[0].contentType",
    ),
    ("bad correlationId", email(correlationId=5), "correlationId"),
    ("metadata not an object", email(metadata=["x"]), "metadata"),
]


@pytest.mark.parametrize(("body", "field"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
async def test_validation_errors_name_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    validation_error(await client.post("/send/email", json=body), field)
    assert await stats(client) == totals(sends=0, requests=1, failures=1)


async def test_every_bad_field_is_reported(client: httpx.AsyncClient) -> None:
    response = await client.post("/send/email", json={"to": ["nope"], "text": 3})
    error = error_of(response, 400, "VALIDATION_ERROR")
    fields = [detail["field"] for detail in error["details"]]
    assert fields == ["idempotencyKey", "to[0]", "subject", "text"]
    body_not_object = await client.post("/send/email", json=[email()])
    assert error_of(body_not_object, 400, "VALIDATION_ERROR")["details"][0]["field"] == "body"


async def test_bodies_that_are_not_json(client: httpx.AsyncClient) -> None:
    posted = await post_bodies_that_are_not_json(client, "/send/email")
    assert (await stats(client))["failures"] == posted


async def test_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    just_fits = email(text="x" * (LIMIT - 1000))
    assert (await client.post("/send/email", json=just_fits)).status_code == 202
    over = email("other", text="x" * LIMIT)
    error_of(await client.post("/send/email", json=over), 413, "PAYLOAD_TOO_LARGE")

    async def chunks() -> AsyncIterator[bytes]:  # no content-length: counted as it arrives
        for _ in range(3):
            yield b" " * (LIMIT // 2)

    streamed = await client.post(
        "/send/email", content=chunks(), headers={"content-type": "application/json"}
    )
    error_of(streamed, 413, "PAYLOAD_TOO_LARGE")
    # Far over the limit: answered from the content-length alone, before any of the body.
    # (A raw socket: httpx leaves its body iterator unfinished when the answer comes early.)
    host, port = client.base_url.host, client.base_url.port
    assert port is not None
    async with await trio.open_tcp_stream(host, port) as stream:
        await stream.send_all(
            b"POST /send/email HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + f"content-length: {16 * LIMIT}\r\n\r\n".encode()
        )
        answer = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some():
                answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b'"PAYLOAD_TOO_LARGE"' in answer
    assert await stats(client) == totals(sends=1, requests=4, failures=3)


async def test_routes_and_methods(client: httpx.AsyncClient) -> None:
    await check_common_routes(client, post="/send/email", item="/notifications")
    assert (await stats(client))["requests"] == 0  # only POST /send/email counts


# -- faults ------------------------------------------------------------------------------------


async def test_admin_faults_partial_updates_and_validation(client: httpx.AsyncClient) -> None:
    assert (await client.get("/admin/faults")).json() == Faults().to_json()
    current = await set_faults(client, fail_rate=0.25, fail_recipients=["*@bounce.test"])
    assert current["fail_rate"] == 0.25
    assert current["fail_recipients"] == ["*@bounce.test"]
    current = await set_faults(client, latency=0.5)
    assert current["fail_rate"] == 0.25  # untouched
    assert current["latency"] == 0.5
    assert (await client.get("/admin/faults")).json() == current

    bad = {"fail_rate": 2, "fail_status": 200, "channel_enabled": "no", "colour": "red"}
    fields = await refused_settings(client, bad)
    assert fields == ["fail_rate", "fail_status", "channel_enabled", "colour"]


async def test_disabled_channel_is_422_and_nothing_is_stored(client: httpx.AsyncClient) -> None:
    await set_faults(client, channel_enabled=False)
    error_of(await client.post("/send/email", json=email()), 422, "CHANNEL_DISABLED")
    await set_faults(client, channel_enabled=True)
    assert (await client.post("/send/email", json=email())).status_code == 202
    assert (await stats(client))["sends"] == 1


async def test_a_failed_attempt_is_not_stored_and_the_key_can_be_retried(
    client: httpx.AsyncClient,
) -> None:
    await set_faults(client, fail_rate=1)
    for _ in range(2):
        error_of(await client.post("/send/email", json=email()), 502, "PROVIDER_ERROR")
    assert await stats(client) == totals(sends=0, requests=2, failures=2)
    await set_faults(client, fail_rate=0)
    retried = await client.post("/send/email", json=email())
    assert retried.status_code == 202
    # Once stored, the key is answered from the store even while the provider fails.
    await set_faults(client, fail_rate=1, channel_enabled=False)
    again = await client.post("/send/email", json=email())
    assert again.status_code == 200
    assert again.json() == retried.json()


async def test_injected_status_and_code(client: httpx.AsyncClient) -> None:
    await set_faults(client, fail_rate=1, fail_status=503, fail_code="RATE_LIMITED")
    response = await client.post("/send/email", json=email())
    error_of(response, 503, "RATE_LIMITED")
    assert response.headers["retry-after"] == "1"


async def test_fail_recipients_patterns(client: httpx.AsyncClient) -> None:
    await set_faults(client, fail_recipients=["*@bounce.test", "Exact@Example.com"])
    glob = await client.post("/send/email", json=email(to=["ok@example.com", "b7@bounce.test"]))
    error = error_of(glob, 502, "INVALID_RECIPIENT")
    assert [d["field"] for d in error["details"]] == ["to[1]"]
    assert "b7@bounce.test" in error["message"]
    exact = await client.post("/send/email", json=email(cc=["exact@example.com"]))
    assert [d["field"] for d in error_of(exact, 502, "INVALID_RECIPIENT")["details"]] == ["cc[0]"]
    assert (await client.post("/send/email", json=email(to=["b7@example.com"]))).status_code == 202
    assert (await stats(client))["sends"] == 1


async def test_random_failures_are_reproducible_with_a_seed(client: httpx.AsyncClient) -> None:
    first = await seeded_statuses(client, "/send/email", [email(f"a-{n}") for n in range(20)])
    assert set(first) == {202, 502}
    again = await seeded_statuses(client, "/send/email", [email(f"b-{n}") for n in range(20)])
    assert again == first


async def test_latency_delays_one_send_without_blocking_the_service(
    client: httpx.AsyncClient,
) -> None:
    await set_faults(client, latency=60)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(client.post, "/send/email", json=email("slow")))
        await wait_for_stats(client, lambda s: s["inFlight"] == 1)
        # The slow send holds its own key only: the service answers everything else.
        assert (await client.get("/health")).status_code == 200
        await set_faults(client, latency=0)
        assert (await client.post("/send/email", json=email("fast"))).status_code == 202
        current = await stats(client)
        assert current["sends"] == 1
        assert current["inFlight"] == 1
        nursery.cancel_scope.cancel()  # the client gives up; the server stops at teardown


# -- errors, lifecycle, command line -----------------------------------------------------------


async def test_unexpected_error_is_500_without_traceback(
    db: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(*args: object) -> None:
        raise RuntimeError("disk on fire")

    service = NotificationService(db)
    async with served(service) as client:
        with monkeypatch.context() as patch:
            patch.setattr(service._store, "record", broken)
            response = await client.post("/send/email", json=email())
        hidden_and_logged(response, caplog, "disk on fire")
        assert (await client.post("/send/email", json=email())).status_code == 202
        assert (await stats(client))["failures"] == 1


async def test_startup_errors_reach_the_caller(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        with pytest.raises(sqlite3.OperationalError):
            await nursery.start(serve_notifications, tmp_path / "missing-dir" / "n.db")

        url = await nursery.start(serve_notifications, tmp_path / "a.db")
        port = int(url.rsplit(":", 1)[1])
        with pytest.raises(OSError, match="in use"):
            await nursery.start(partial(serve_notifications, tmp_path / "b.db", port=port))
        nursery.cancel_scope.cancel()


def test_module_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sluiceway.apps.notification", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    assert "--db" in result.stdout
    assert "--fail-rate" in result.stdout


async def test_module_serves_until_sigterm(db: Path) -> None:
    arguments = ["--db", str(db), "--fail-recipient", "*@bounce.test"]
    async with serving_module("sluiceway.apps.notification", *arguments) as (base, line):
        assert line == f"notification service listening on {base} (db {db})"
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.get("/health")).json() == {"status": "ok"}
            bounced = await client.post("/send/email", json=email(to=["x@bounce.test"]))
            error_of(bounced, 502, "INVALID_RECIPIENT")


async def test_quiet_by_default(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    await expect_quiet_logs(client, caplog, "/send/email", email(), 202)


# -- text and numbers that cannot be stored or sent ----------------------------------------------

ATTACHMENT = {"name": "a.txt", "contentType": "text/plain", "contentBase64": "aGk="}


async def post_json_text(client: httpx.AsyncClient, text: str) -> httpx.Response:
    """POST a JSON body written by hand (httpx's ``json=`` cannot carry a lone surrogate)."""
    return await client.post(
        "/send/email", content=text.encode(), headers={"content-type": "application/json"}
    )


def sends_in_file(db: Path) -> int:
    """The rows of the service's ``sends`` table, read from the SQLite file itself."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        (count,) = conn.execute("SELECT COUNT(*) FROM sends").fetchone()
    return int(count)


#: (case, body, the field named in the 400): a lone surrogate in every string field.
SURROGATES: list[tuple[str, dict[str, Any], str]] = [
    ("key", email("campaign-\ud800"), "idempotencyKey"),
    ("subject", email(subject="Hello \udfff"), "subject"),
    ("html", email(html="<p>\ud800</p>"), "html"),
    ("text", email(text="plain \udc00"), "text"),
    ("from", email(**{"from": "actor-\ud800"}), "from"),
    ("replyTo", email(replyTo="re\ud800@example.com"), "replyTo"),
    ("to", email(to=["ad\ud800@example.com"]), "to[0]"),
    ("cc", email(cc=["\udbff@example.com"]), "cc[0]"),
    ("correlationId", email(correlationId="corr-\ud800"), "correlationId"),
    (
        "attachment name",
        email(attachments=[{**ATTACHMENT, "name": "\ud800.txt"}]),
        "attachments[0].name",
    ),
    (
        "attachment type",
        email(attachments=[{**ATTACHMENT, "contentType": "text/plain; x=\ud800"}]),
        "attachments[0].contentType",
    ),
    ("metadata value", email(metadata={"campaign_id": "c\ud800"}), "metadata.campaign_id"),
    ("metadata key", email(metadata={"c\ud800": "c1"}), 'metadata["c\\ud800"]'),
    (
        "nested metadata",
        email(metadata={"tags": ["ok", {"deep": ["\udfff"]}]}),
        "metadata.tags[1].deep[0]",
    ),
]


@pytest.mark.parametrize(
    ("body", "field"), [c[1:] for c in SURROGATES], ids=[c[0] for c in SURROGATES]
)
async def test_a_lone_surrogate_is_400_and_nothing_is_stored(
    client: httpx.AsyncClient, db: Path, body: dict[str, Any], field: str
) -> None:
    # The check comes before the provider: with the channel disabled, still 400 (not 422).
    await set_faults(client, channel_enabled=False)
    response = await post_json_text(client, json.dumps(body))
    error = error_of(response, 400, "VALIDATION_ERROR")
    assert field in [detail["field"] for detail in error["details"]], error
    assert "surrogate" in response.text
    await set_faults(client, channel_enabled=True)
    again = await post_json_text(client, json.dumps(body))  # the same on a retry
    error_of(again, 400, "VALIDATION_ERROR")
    assert await stats(client) == totals(sends=0, requests=2, failures=2)
    assert sends_in_file(db) == 0
    # The key was not taken: the same key with valid text is sent.
    fixed = email(body.get("idempotencyKey", "k").replace("\ud800", "x"))
    assert (await client.post("/send/email", json=fixed)).status_code == 202


@pytest.mark.parametrize(
    ("number", "where"),
    [
        ("1e999", '{"amount": NUMBER}'),
        ("-1e999", '{"amount": NUMBER}'),
        ("1E400", '{"amounts": [1, 2.5, NUMBER]}'),
        ("9" * 400 + ".0", '{"x": {"y": NUMBER}}'),
    ],
)
async def test_a_number_too_large_for_a_double_is_400(
    client: httpx.AsyncClient, db: Path, number: str, where: str
) -> None:
    """JSON has no Infinity: a number beyond a double's range would be stored as one, and the
    stored JSON would no longer be JSON."""
    text = json.dumps(email(metadata={"m": 0})).replace('{"m": 0}', where.replace("NUMBER", number))
    response = await post_json_text(client, text)
    error = error_of(response, 400, "VALIDATION_ERROR")
    assert error["details"][0]["field"].startswith("metadata.")
    assert "finite" in error["details"][0]["message"]
    assert sends_in_file(db) == 0
    # The largest double is fine, and what is stored is JSON.
    sent = await post_json_text(client, text.replace(number, "1.7976931348623157e308"))
    assert sent.status_code == 202, sent.text
    with contextlib.closing(sqlite3.connect(db)) as conn:
        (message,) = conn.execute("SELECT message FROM sends").fetchone()
    assert "1.7976931348623157e+308" in message
    json.loads(message, parse_constant=lambda name: pytest.fail(f"{name} stored"))


#: (case, body, the field named in the 400): line breaks in fields that end up in headers.
HEADER_INJECTIONS: list[tuple[str, dict[str, Any], str]] = [
    ("subject CRLF", email(subject="Hi\r\nBcc: victim@example.com"), "subject"),
    ("subject LF", email(subject="Hi\nthere"), "subject"),
    ("subject CR", email(subject="Hi\rthere"), "subject"),
    ("subject NUL", email(subject="Hi\x00"), "subject"),
    ("subject line separator", email(subject="Hi\u2028there"), "subject"),
    ("subject NEL", email(subject="Hi\x85there"), "subject"),
    ("from", email(**{"from": "actor\r\nX-Injected: 1"}), "from"),
    ("replyTo", email(replyTo="re@example.com\r\nBcc: v@example.com"), "replyTo"),
    ("to", email(to=["ada@example.com\nBcc: v@example.com"]), "to[0]"),
    ("key", email("campaign\r\n1"), "idempotencyKey"),
    ("correlationId", email(correlationId="c\n1"), "correlationId"),
    (
        "attachment name",
        email(attachments=[{**ATTACHMENT, "name": "a.txt\r\nContent-Type: text/html"}]),
        "attachments[0].name",
    ),
    (
        "attachment type",
        email(attachments=[{**ATTACHMENT, "contentType": "text/plain\r\nX: 1"}]),
        "attachments[0].contentType",
    ),
]


@pytest.mark.parametrize(
    ("body", "field"), [c[1:] for c in HEADER_INJECTIONS], ids=[c[0] for c in HEADER_INJECTIONS]
)
async def test_line_breaks_in_header_fields_are_400(
    client: httpx.AsyncClient, db: Path, body: dict[str, Any], field: str
) -> None:
    response = await post_json_text(client, json.dumps(body))
    error = error_of(response, 400, "VALIDATION_ERROR")
    assert field in [detail["field"] for detail in error["details"]], error
    assert sends_in_file(db) == 0


async def test_line_breaks_and_tabs_where_they_belong_are_fine(client: httpx.AsyncClient) -> None:
    body = email(
        subject="Hello\tAda",
        html="<p>\r\n  Hi\r\n</p>",
        text="Hi,\n\nsee you\u2028soon",
        metadata={"note": "line one\nline two", "ratio": 0.5, "big": 10**30},
    )
    response = await post_json_text(client, json.dumps(body))
    assert response.status_code == 202, response.text
    stored = await client.get(f"/notifications/{response.json()['id']}")
    assert stored.status_code == 200


async def test_fault_settings_refuse_text_that_cannot_be_sent(client: httpx.AsyncClient) -> None:
    before = (await client.get("/admin/faults")).json()
    for text, field in [
        ('{"fail_code": "BAD\\ud800"}', "fail_code"),
        ('{"fail_code": "BAD\\r\\nX: 1"}', "fail_code"),
        ('{"fail_recipients": ["ok@example.com", "\\udfff@example.com"]}', "fail_recipients[1]"),
        ('{"latency": 1e999}', "latency"),
    ]:
        response = await client.post(
            "/admin/faults", content=text.encode(), headers={"content-type": "application/json"}
        )
        error = error_of(response, 400, "VALIDATION_ERROR")
        assert [detail["field"] for detail in error["details"]] == [field]
    assert (await client.get("/admin/faults")).json() == before
