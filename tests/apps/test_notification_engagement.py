"""Engagement in the notification service over real HTTP: opens, clicks and replies recorded per
sent email (``POST /v1/emails/{id}/{event}``) and read back per campaign and contact (``GET
/v1/engagement``), on a hypercorn server on 127.0.0.1:0 per test."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from sluiceway.apps.notification import NotificationService, serve_notifications
from tests.apps.service_helpers import client_of, error_of

EVENTS = ("opened", "clicked", "replied")


def email(key: str, campaign: str = "c1", contact: str = "k1", step: str = "s1") -> dict[str, Any]:
    return {
        "idempotencyKey": key,
        "to": ["ada@example.com"],
        "subject": "Hello Ada",
        "html": "<p>Hi</p>",
        "metadata": {"campaign_id": campaign, "contact_id": contact, "step_id": step},
    }


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "notifications.db"


@pytest.fixture
async def client(nursery: trio.Nursery, db: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with client_of(nursery, partial(serve_notifications, db)) as client:
        yield client


async def send(client: httpx.AsyncClient, key: str, **refs: str) -> str:
    response = await client.post("/send/email", json=email(key, **refs))
    assert response.status_code == 202, response.text
    email_id: str = response.json()["id"]
    return email_id


async def test_each_event_is_recorded_once_with_its_first_time(
    client: httpx.AsyncClient,
) -> None:
    email_id = await send(client, "e1")
    fresh = (await client.get("/v1/engagement", params={"campaign": "c1"})).json()
    assert len(fresh) == 1
    assert fresh[0]["email_id"] == email_id
    assert fresh[0]["step"] == "s1"
    assert abs(fresh[0]["sent_at"] - time.time()) < 60
    assert fresh[0]["opened_at"] is None
    assert fresh[0]["clicked_at"] is None
    assert fresh[0]["replied_at"] is None

    for offset, event in enumerate(EVENTS):
        at = 1_800_000_000 + offset
        first = await client.post(f"/v1/emails/{email_id}/{event}", json={"at": at})
        assert first.status_code == 200, first.text
        record = first.json()
        assert record["email_id"] == email_id
        assert record[f"{event}_at"] == at
        # A repeat (later, as a second open would be) keeps the first time and counts.
        again = await client.post(f"/v1/emails/{email_id}/{event}", json={"at": at + 100})
        assert again.status_code == 200
        assert again.json()[f"{event}_at"] == at
    record = again.json()
    assert (record["opens"], record["clicks"], record["replies"]) == (2, 2, 2)
    assert record["opened_at"] == 1_800_000_000
    assert record["clicked_at"] == 1_800_000_001
    assert record["replied_at"] == 1_800_000_002

    listed = (await client.get("/v1/engagement", params={"campaign": "c1", "contact": "k1"})).json()
    assert listed == [record]
    assert {"email_id", "step", "sent_at", "opened_at", "clicked_at", "replied_at"} <= set(
        listed[0]
    )


async def test_without_a_body_the_time_is_now_and_an_earlier_report_wins(
    client: httpx.AsyncClient,
) -> None:
    email_id = await send(client, "e1")
    before = time.time()
    response = await client.post(f"/v1/emails/{email_id}/opened")
    assert response.status_code == 200, response.text
    assert before - 1 <= response.json()["opened_at"] <= time.time() + 1
    # A provider's webhooks may arrive out of order: the earliest time reported is kept.
    earlier = await client.post(f"/v1/emails/{email_id}/opened", json={"at": 1000.5})
    assert earlier.json()["opened_at"] == 1000.5
    null_at = await client.post(f"/v1/emails/{email_id}/clicked", json={"at": None})
    assert null_at.status_code == 200
    assert null_at.json()["clicked_at"] >= before - 1


async def test_unknown_email_is_404_and_wrong_method_is_405(client: httpx.AsyncClient) -> None:
    error_of(await client.post("/v1/emails/nope/opened", json={"at": 1}), 404, "NOT_FOUND")
    email_id = await send(client, "e1")
    error_of(await client.post(f"/v1/emails/{email_id}/bounced"), 404, "NOT_FOUND")
    for event in EVENTS:
        response = await client.get(f"/v1/emails/{email_id}/{event}")
        error_of(response, 405, "METHOD_NOT_ALLOWED")
        assert response.headers["allow"] == "POST"
    response = await client.post("/v1/engagement", json={})
    error_of(response, 405, "METHOD_NOT_ALLOWED")
    assert response.headers["allow"] == "GET, HEAD"
    # Nothing was recorded by the refused requests.
    listed = (await client.get("/v1/engagement", params={"contact": "k1"})).json()
    assert [(e["opened_at"], e["opens"]) for e in listed] == [(None, 0)]


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (json.dumps({"at": "yesterday"}), "application/json", 400, "VALIDATION_ERROR"),
        (json.dumps({"at": True}), "application/json", 400, "VALIDATION_ERROR"),
        (json.dumps({"at": -1}), "application/json", 400, "VALIDATION_ERROR"),
        ('{"at": 1e999}', "application/json", 400, "VALIDATION_ERROR"),
        ('{"at": NaN}', "application/json", 400, "INVALID_JSON"),
        ('{"at": Infinity}', "application/json", 400, "INVALID_JSON"),
        ("[1]", "application/json", 400, "VALIDATION_ERROR"),
        ("{", "application/json", 400, "INVALID_JSON"),
        ("at=1", "application/x-www-form-urlencoded", 415, "UNSUPPORTED_MEDIA_TYPE"),
    ],
)
async def test_a_bad_body_is_refused_and_records_nothing(
    client: httpx.AsyncClient, body: str, content_type: str, status: int, code: str
) -> None:
    email_id = await send(client, "e1")
    response = await client.post(
        f"/v1/emails/{email_id}/opened", content=body, headers={"content-type": content_type}
    )
    error = error_of(response, status, code)
    if code == "VALIDATION_ERROR":
        assert error["details"][0]["field"] in {"at", "body"}
    listed = (await client.get("/v1/engagement", params={"campaign": "c1"})).json()
    assert listed[0]["opened_at"] is None
    assert listed[0]["opens"] == 0


async def test_the_read_endpoint_filters_by_campaign_contact_and_step(
    client: httpx.AsyncClient,
) -> None:
    ids = {
        (campaign, contact, step): await send(
            client, f"{campaign}-{contact}-{step}", campaign=campaign, contact=contact, step=step
        )
        for campaign in ("c1", "c2")
        for contact in ("k1", "k2")
        for step in ("s1", "s2")
    }
    await client.post(f"/v1/emails/{ids['c1', 'k1', 's2']}/clicked", json={"at": 5})

    async def listed(**params: str) -> list[dict[str, Any]]:
        response = await client.get("/v1/engagement", params=params)
        assert response.status_code == 200, response.text
        result: list[dict[str, Any]] = response.json()
        return result

    pair = await listed(campaign="c1", contact="k1")
    assert [e["email_id"] for e in pair] == [ids["c1", "k1", "s1"], ids["c1", "k1", "s2"]]
    assert [e["step"] for e in pair] == ["s1", "s2"]
    assert [e["clicked_at"] for e in pair] == [None, 5]
    assert len(await listed(campaign="c2")) == 4
    assert {e["email_id"] for e in await listed(contact="k2")} == {
        ids[c, "k2", s] for c in ("c1", "c2") for s in ("s1", "s2")
    }
    assert [e["email_id"] for e in await listed(campaign="c2", contact="k2", step="s1")] == [
        ids["c2", "k2", "s1"]
    ]
    assert await listed(campaign="c3") == []
    assert await listed(campaign="c1", contact="k3") == []


async def test_the_read_endpoint_refuses_bad_queries(client: httpx.AsyncClient) -> None:
    for query, field in [
        ("", "campaign|contact"),
        ("step=s1", "campaign|contact"),
        ("campaign=", "campaign"),
        ("campaign=c1&campaign=c2", "campaign"),
        ("campaign=c1&colour=red", "colour"),
        ("campaign=%ff", "query"),
    ]:
        error = error_of(await client.get(f"/v1/engagement?{query}"), 400, "VALIDATION_ERROR")
        assert error["details"][0]["field"] == field, query


async def test_sends_without_references_are_listed_under_none(client: httpx.AsyncClient) -> None:
    body = email("plain")
    body["metadata"] = {"campaign_id": 7, "contact_id": "k1"}  # a number is no reference
    assert (await client.post("/send/email", json=body)).status_code == 202
    listed = (await client.get("/v1/engagement", params={"contact": "k1"})).json()
    assert [(e["campaign"], e["contact"], e["step"]) for e in listed] == [(None, "k1", None)]
    assert (await client.get("/v1/engagement", params={"campaign": "7"})).json() == []


async def test_a_version_0_store_is_migrated_keeping_its_sends(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        """
        CREATE TABLE sends (key TEXT PRIMARY KEY, id TEXT NOT NULL UNIQUE, result TEXT NOT NULL,
            message TEXT NOT NULL, created_at TEXT NOT NULL);
        CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO counters VALUES ('requests', 1), ('repeats', 0), ('failures', 0);
        """
    )
    result = {"id": "old-1", "timestamp": "2026-01-01T09:00:00.000Z"}
    message = {"metadata": {"campaign_id": "c1", "contact_id": "k1"}}
    conn.execute(
        "INSERT INTO sends VALUES (?, ?, ?, ?, ?)",
        ("k", "old-1", json.dumps(result), json.dumps(message), result["timestamp"]),
    )
    conn.commit()
    conn.close()

    for _ in range(2):  # the second opening finds the current version and changes nothing
        async with NotificationService(path) as service:
            assert (await service.stats())["sends"] == 1
            assert await service.notification("old-1") == result
            record = await service.record_engagement("old-1", "replied", at=12.0)
            assert record is not None
            assert record["replied_at"] == 12.0
            (entry,) = await service.engagement(campaign="c1", contact="k1")
            assert entry["sent_at"] == 1767258000.0
            assert entry["step"] is None
            assert entry["replies"] in (1, 2)
    with sqlite3.connect(path) as check:
        assert check.execute("PRAGMA user_version").fetchone() == (1,)


async def test_a_store_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(RuntimeError, match="schema version 99"):
        async with NotificationService(path):
            pass
