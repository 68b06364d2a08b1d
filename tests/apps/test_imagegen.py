"""The image service: over real HTTP (a hypercorn server on 127.0.0.1:0 per test, httpx) for the
HTTP contract, and in process through httpx's ASGI transport on virtual time for latencies."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from PIL import Image

from sluiceway.apps.imagegen import (
    ASPECT_RATIOS,
    QUALITIES,
    FaultRule,
    FileBlobStore,
    ImageFaults,
    ImageService,
    main,
    render_image,
    serve_images,
)
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

LIMIT = 16 * 1024  # max_body_bytes of the test servers
RESULT_FIELDS = {
    "id",
    "idempotency_key",
    "object_key",
    "format",
    "content_type",
    "width",
    "height",
    "bytes",
    "sha256",
    "prompt",
    "quality",
    "aspect_ratio",
    "metadata",
    "created_at",
}


def image(key: str | None = "story-1/page-1", **changes: Any) -> dict[str, Any]:
    """A valid POST /v1/images/generate body with ``changes`` applied; a change to ``None``
    removes the field."""
    body: dict[str, Any] = {
        "prompt": "A small fox finds a lantern in the snowy forest",
        "quality": "medium",
        "aspect_ratio": "3:2",
        "idempotency_key": key,
        "metadata": {"story_id": "story-1", "page": 1},
    }
    body.update(changes)
    return {name: value for name, value in body.items() if value is not None}


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "images.db"


@pytest.fixture
def blob_dir(tmp_path: Path) -> Path:
    return tmp_path / "blobs"


@pytest.fixture
async def client(
    nursery: trio.Nursery, db: Path, blob_dir: Path
) -> AsyncIterator[httpx.AsyncClient]:
    serve = partial(serve_images, db, blob_dir, max_body_bytes=LIMIT)
    async with client_of(nursery, serve) as client:
        yield client


async def stats(client: httpx.AsyncClient) -> dict[str, int]:
    """``GET /stats``: every POST /v1/images/generate counted once, by its outcome."""
    return await checked_stats(client, "generations")


async def counts(client: httpx.AsyncClient, prefix: str | None = None) -> dict[str, Any]:
    params = {} if prefix is None else {"prefix": prefix}
    response = await client.get("/v1/images/counts", params=params)
    assert response.status_code == 200, response.text
    keys: dict[str, Any] = response.json()["keys"]
    return keys


def blob_files(blob_dir: Path) -> list[Path]:
    return [path for path in blob_dir.rglob("*") if path.is_file()] if blob_dir.exists() else []


# -- generating and idempotency ----------------------------------------------------------------


async def test_a_new_key_is_201_and_a_repeat_is_200_with_the_stored_result(
    client: httpx.AsyncClient, blob_dir: Path
) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}
    first = await client.post("/v1/images/generate", json=image())
    assert first.status_code == 201, first.text
    result = first.json()
    assert set(result) == RESULT_FIELDS
    assert result["idempotency_key"] == "story-1/page-1"
    assert (result["format"], result["content_type"]) == ("png", "image/png")
    assert (result["width"], result["height"]) == (512, 341)
    assert result["object_key"] == f"{result['sha256']}.png"
    assert result["metadata"] == {"story_id": "story-1", "page": 1}
    assert result["created_at"].endswith("Z")
    assert first.headers["location"] == f"/v1/images/{result['id']}"

    blob = await client.get(f"/v1/blobs/{result['object_key']}")
    assert blob.status_code == 200
    assert blob.headers["content-type"] == "image/png"
    assert "immutable" in blob.headers["cache-control"]
    assert blob.headers["content-security-policy"] == "sandbox"
    assert len(blob.content) == result["bytes"]
    assert hashlib.sha256(blob.content).hexdigest() == result["sha256"]
    with Image.open(io.BytesIO(blob.content)) as picture:
        assert (picture.format, picture.size) == ("PNG", (512, 341))
    assert len(blob_files(blob_dir)) == 1

    # Whatever else the body says, a repeated key gets the stored result and renders nothing.
    again = await client.post(
        "/v1/images/generate", json=image(prompt="Something else", quality="high")
    )
    assert again.status_code == 200
    assert again.json() == result
    assert (await client.get(f"/v1/images/{result['id']}")).json() == result
    assert await stats(client) == totals(generations=1, requests=2, repeats=1)
    assert await counts(client) == {"story-1/page-1": {"requests": 2, "generations": 1}}


async def test_twenty_concurrent_requests_with_one_key_generate_once(
    client: httpx.AsyncClient, blob_dir: Path
) -> None:
    # A little latency widens the window between "is the key known?" and "record the image".
    await set_faults(client, latency=0.01)
    responses = await post_at_once(client, "/v1/images/generate", image("story-1/dup"), times=20)
    assert sorted(r.status_code for r in responses) == [200] * 19 + [201]
    assert len({json.dumps(r.json(), sort_keys=True) for r in responses}) == 1
    assert await counts(client) == {"story-1/dup": {"requests": 20, "generations": 1}}
    assert (await stats(client))["generations"] == 1
    assert len(blob_files(blob_dir)) == 1


async def test_requests_without_a_key_each_generate(client: httpx.AsyncClient) -> None:
    first = await client.post("/v1/images/generate", json=image(None))
    second = await client.post("/v1/images/generate", json=image(None))
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["id"] != second.json()["id"]
    assert first.json()["idempotency_key"] is None
    # Deterministic rendering: the same inputs are the same blob.
    assert first.json()["object_key"] == second.json()["object_key"]
    assert await counts(client) == {}  # keyless requests count in the totals only
    assert (await stats(client))["generations"] == 2


async def test_defaults_and_sizes(client: httpx.AsyncClient) -> None:
    body = image("k-defaults", quality=None, aspect_ratio=None, metadata=None)
    default = (await client.post("/v1/images/generate", json=body)).json()
    assert (default["quality"], default["aspect_ratio"], default["metadata"]) == (
        "medium",
        "3:2",
        {},
    )
    same = (await client.post("/v1/images/generate", json=image("k-same"))).json()
    assert same["object_key"] == default["object_key"]  # same prompt, quality and aspect

    low = (await client.post("/v1/images/generate", json=image("k-low", quality="low"))).json()
    assert (low["format"], low["content_type"], low["width"], low["height"]) == (
        "jpeg",
        "image/jpeg",
        256,
        171,
    )
    assert low["object_key"].endswith(".jpeg")
    tall = image("k-tall", quality="high", aspect_ratio="9:16")
    high = (await client.post("/v1/images/generate", json=tall)).json()
    assert (high["width"], high["height"]) == (576, 1024)
    assert len({default["object_key"], low["object_key"], high["object_key"]}) == 3
    blob = await client.get(f"/v1/blobs/{low['object_key']}")
    assert blob.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(blob.content)) as picture:
        assert (picture.format, picture.size) == ("JPEG", (256, 171))


def test_rendering_is_deterministic_and_sized() -> None:
    for quality, long_side in QUALITIES.items():
        for aspect in ASPECT_RATIOS:
            rendered = render_image("a lighthouse in a storm", quality=quality, aspect_ratio=aspect)
            assert max(rendered.width, rendered.height) == long_side
            across, down = (int(n) for n in aspect.split(":"))
            assert abs(rendered.width / rendered.height - across / down) < 0.01
            expected = ("jpeg", b"\xff\xd8\xff") if quality == "low" else ("png", b"\x89PNG")
            assert (rendered.format, rendered.data[:3]) == (expected[0], expected[1][:3])
    one = render_image("a lighthouse in a storm", quality="medium", aspect_ratio="3:2")
    assert render_image("a lighthouse in a storm", quality="medium", aspect_ratio="3:2") == one
    assert render_image("a lighthouse at dawn", quality="medium", aspect_ratio="3:2") != one
    assert len(one.data) < 64 * 1024  # flat shapes compress well
    # No metadata or time chunk that would make the bytes differ between runs.
    assert b"tIME" not in one.data
    assert b"tEXt" not in one.data
    # Text the bundled font cannot draw, and a blank prompt, still render.
    assert render_image("über 漢字 🦊", quality="low", aspect_ratio="1:1").width == 256
    assert render_image("   ", quality="low", aspect_ratio="1:1").height == 256


@pytest.mark.parametrize(
    ("quality", "aspect", "message"),
    [("ultra", "3:2", "low, medium, high"), ("low", "5:4", "1:1, 3:2")],
)
def test_unknown_quality_or_aspect_ratio_lists_the_allowed_ones(
    quality: str, aspect: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        render_image("x", quality=quality, aspect_ratio=aspect)


# -- validation and malformed requests ---------------------------------------------------------

INVALID: list[tuple[str, str, str]] = [
    ("missing prompt", '{"idempotency_key": "k"}', "prompt"),
    ("blank prompt", '{"prompt": "  \\n "}', "prompt"),
    ("prompt not a string", '{"prompt": ["a"]}', "prompt"),
    ("long prompt", json.dumps({"prompt": "p" * 4001}), "prompt"),
    ("surrogate in prompt", '{"prompt": "fox \\ud800"}', "prompt"),
    ("bad quality", '{"prompt": "p", "quality": "ultra"}', "quality"),
    ("bad aspect ratio", '{"prompt": "p", "aspect_ratio": "5:4"}', "aspect_ratio"),
    ("numeric aspect ratio", '{"prompt": "p", "aspect_ratio": 1.5}', "aspect_ratio"),
    ("empty key", '{"prompt": "p", "idempotency_key": ""}', "idempotency_key"),
    ("long key", json.dumps({"prompt": "p", "idempotency_key": "k" * 257}), "idempotency_key"),
    ("numeric key", '{"prompt": "p", "idempotency_key": 7}', "idempotency_key"),
    ("line break in key", '{"prompt": "p", "idempotency_key": "a\\nb"}', "idempotency_key"),
    ("metadata not an object", '{"prompt": "p", "metadata": ["x"]}', "metadata"),
    ("nested metadata", '{"prompt": "p", "metadata": {"a": {"b": 1}}}', "metadata.a"),
    ("null in metadata", '{"prompt": "p", "metadata": {"a": null}}', "metadata.a"),
    ("infinite number", '{"prompt": "p", "metadata": {"n": 1e999}}', "metadata.n"),
    ("unknown field", '{"prompt": "p", "size": "1024x1024"}', "size"),
]


@pytest.mark.parametrize(("text", "field"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
async def test_validation_errors_name_the_field(
    client: httpx.AsyncClient, blob_dir: Path, text: str, field: str
) -> None:
    response = await client.post(
        "/v1/images/generate", content=text.encode(), headers={"content-type": "application/json"}
    )
    error = validation_error(response, field)
    assert [detail["field"] for detail in error["details"]] == [field]
    assert await stats(client) == totals(generations=0, requests=1, failures=1)
    assert blob_files(blob_dir) == []


async def test_every_bad_field_is_reported(client: httpx.AsyncClient) -> None:
    body = {
        "quality": "ultra",
        "aspect_ratio": "7:1",
        "idempotency_key": "story-9/page-1",
        "metadata": {"ok": "yes", "bad": [1]},
        "colour": "red",
        "n": 2,
    }
    error = error_of(await client.post("/v1/images/generate", json=body), 400, "VALIDATION_ERROR")
    fields = [detail["field"] for detail in error["details"]]
    assert fields == ["colour", "n", "prompt", "quality", "aspect_ratio", "metadata.bad"]
    assert "prompt, quality, aspect_ratio" in error["details"][0]["message"]  # the known ones
    # A request failing validation with a valid key is counted against it.
    assert await counts(client) == {"story-9/page-1": {"requests": 1, "generations": 0}}
    not_object = await client.post("/v1/images/generate", json=[image()])
    assert error_of(not_object, 400, "VALIDATION_ERROR")["details"][0]["field"] == "body"


async def test_bodies_that_are_not_json(client: httpx.AsyncClient) -> None:
    posted = await post_bodies_that_are_not_json(client, "/v1/images/generate")
    too_large = await client.post(
        "/v1/images/generate",
        content=b" " * (LIMIT + 1),
        headers={"content-type": "application/json"},
    )
    error_of(too_large, 413, "PAYLOAD_TOO_LARGE")
    failed = posted + 1
    assert await stats(client) == totals(generations=0, requests=failed, failures=failed)


async def test_routes_and_methods(client: httpx.AsyncClient) -> None:
    await check_common_routes(client, post="/v1/images/generate", item="/v1/images")
    error_of(await client.post("/v1/images/counts", json={}), 405, "METHOD_NOT_ALLOWED")
    assert (await stats(client))["requests"] == 0  # only POST /v1/images/generate counts


# -- blobs ---------------------------------------------------------------------------------------


async def test_the_blob_endpoint_refuses_malformed_and_missing_keys(
    client: httpx.AsyncClient, blob_dir: Path
) -> None:
    result = (await client.post("/v1/images/generate", json=image())).json()
    key = result["object_key"]
    malformed = await client.get("/v1/blobs/not-a-key.png")
    assert error_of(malformed, 400, "VALIDATION_ERROR")["details"][0]["field"] == "object_key"
    error_of(await client.get(f"/v1/blobs/{key.upper()}"), 400, "VALIDATION_ERROR")
    error_of(await client.get(f"/v1/blobs/{'0' * 64}.png"), 404, "NOT_FOUND")
    # An encoded slash is a slash by the time the path is routed: never a file outside.
    (blob_dir.parent / "secret.png").write_bytes(b"secret")
    escape = await client.get("/v1/blobs/..%2Fsecret.png")
    assert escape.status_code in (400, 404)
    assert b"secret" not in escape.content.replace(b"secret.png", b"")

    head = await client.head(f"/v1/blobs/{key}")
    assert head.status_code == 200
    assert int(head.headers["content-length"]) == result["bytes"]


async def test_a_corrupt_blob_is_500_not_served(
    client: httpx.AsyncClient, blob_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    result = (await client.post("/v1/images/generate", json=image())).json()
    key = result["object_key"]
    FileBlobStore(blob_dir).path_of(key).write_bytes(b"garbage")
    error_of(await client.get(f"/v1/blobs/{key}"), 500, "BLOB_CORRUPT")
    assert "corrupt" in caplog.text


# -- faults --------------------------------------------------------------------------------------


async def test_a_failure_stores_nothing_and_a_retry_succeeds(
    client: httpx.AsyncClient, blob_dir: Path
) -> None:
    await set_faults(client, fail_rate=1)
    for _ in range(2):
        failed = await client.post("/v1/images/generate", json=image())
        error_of(failed, 503, "GENERATION_FAILED")
        assert failed.headers["retry-after"] == "1"
    assert await counts(client) == {"story-1/page-1": {"requests": 2, "generations": 0}}
    assert blob_files(blob_dir) == []
    await set_faults(client, fail_rate=0)
    retried = await client.post("/v1/images/generate", json=image())
    assert retried.status_code == 201
    # Once stored, the key is answered from the store even while generation fails.
    await set_faults(client, fail_rate=1, latency=60)
    again = await client.post("/v1/images/generate", json=image())
    assert again.status_code == 200
    assert again.json() == retried.json()
    assert await counts(client) == {"story-1/page-1": {"requests": 4, "generations": 1}}
    assert await stats(client) == totals(generations=1, requests=4, repeats=1, failures=2)


async def test_admin_faults_partial_updates_rules_and_validation(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.get("/admin/faults")).json() == ImageFaults().to_json()
    current = await set_faults(
        client,
        fail_rate=0.25,
        rules=[
            {"match": "page-3", "fail_status": 400, "fail_code": "CONTENT_POLICY"},
            {"match": ["story-2", "dragon"], "latency": 12},
        ],
    )
    assert current["rules"] == [
        {"match": ["page-3"], "fail_status": 400, "fail_code": "CONTENT_POLICY"},
        {"match": ["story-2", "dragon"], "latency": 12.0},
    ]
    current = await set_faults(client, latency=0.5)
    assert current["fail_rate"] == 0.25  # untouched
    assert len(current["rules"]) == 2
    assert (await client.get("/admin/faults")).json() == current

    bad = {
        "fail_rate": 2,
        "fail_status": 200,
        "rules": [
            {"match": [], "latency": 1},
            {"match": "x", "fail_status": 302, "colour": "red"},
            {"match": "x"},
            {"match": "x", "fail_code": "C"},
            "not a rule",
        ],
        "jitter": -1,
        "colour": "red",
    }
    assert await refused_settings(client, bad) == [
        "fail_rate",
        "fail_status",
        "rules[0].match",
        "rules[1].colour",
        "rules[1].fail_status",
        "rules[2]",
        "rules[3]",
        "rules[4]",
        "jitter",
        "colour",
    ]


async def test_rules_fail_the_requests_they_match(client: httpx.AsyncClient) -> None:
    await set_faults(
        client,
        rules=[
            {"match": "page-3", "fail_status": 400, "fail_code": "CONTENT_POLICY"},
            # Every string must occur: the key's story and the prompt's dragon.
            {"match": ["story-2", "dragon"], "fail_status": 500},
            # Metadata values are matched as JSON writes them.
            {"match": "true", "fail_status": 429},
        ],
    )
    permanent = await client.post("/v1/images/generate", json=image("story-1/page-3"))
    assert "page-3" in error_of(permanent, 400, "CONTENT_POLICY")["message"]
    transient = await client.post(
        "/v1/images/generate", json=image("story-2/page-1", prompt="A red dragon sleeps")
    )
    error_of(transient, 500, "GENERATION_FAILED")
    limited = await client.post(
        "/v1/images/generate", json=image("story-5/page-1", metadata={"draft": True})
    )
    error_of(limited, 429, "GENERATION_FAILED")
    assert limited.headers["retry-after"] == "1"
    # Only one of the strings: no match.
    no_dragon = await client.post("/v1/images/generate", json=image("story-2/page-2"))
    assert no_dragon.status_code == 201
    keyless = await client.post("/v1/images/generate", json=image(None, prompt="dragon, story-2"))
    error_of(keyless, 500, "GENERATION_FAILED")  # the prompt alone can match
    assert await counts(client, "story-2/") == {
        "story-2/page-1": {"requests": 1, "generations": 0},
        "story-2/page-2": {"requests": 1, "generations": 1},
    }


async def test_random_failures_are_reproducible_with_a_seed(client: httpx.AsyncClient) -> None:
    path = "/v1/images/generate"
    first = await seeded_statuses(client, path, [image(f"a-{n}") for n in range(16)])
    assert set(first) == {201, 503}
    assert await seeded_statuses(client, path, [image(f"b-{n}") for n in range(16)]) == first


def test_fault_settings_in_python() -> None:
    faults = ImageFaults(rules=[{"match": "x", "latency": 3}])
    assert faults.rules == (FaultRule(("x",), latency=3),)
    assert faults.rule_for("a x b") == faults.rules[0]
    assert faults.rule_for("nothing") is None
    assert ImageFaults.from_json(faults.to_json()) == faults
    assert faults.evolve(seed=3).seed == 3
    for bad in (
        {"latency": -1},
        {"jitter": 1e9},
        {"fail_rate": 1.5},
        {"fail_status": 302},
        {"fail_code": "two words"},
        {"latency": True},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ImageFaults(**bad)
    with pytest.raises(ValueError, match="latency, a fail_status or both"):
        FaultRule("x")
    with pytest.raises(ValueError, match="needs its fail_status"):
        FaultRule("x", latency=1, fail_code="C")
    with pytest.raises(ValueError, match="match"):
        FaultRule(("x", ""), latency=1)


# -- virtual time (in process, threads=False) -----------------------------------------------------


@contextlib.asynccontextmanager
async def in_process(
    tmp_path: Path, faults: ImageFaults
) -> AsyncIterator[tuple[ImageService, httpx.AsyncClient]]:
    service = ImageService(tmp_path / "v.db", tmp_path / "vblobs", faults=faults, threads=False)
    async with (
        service,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=service), base_url="http://images.test"
        ) as client,
    ):
        yield service, client


async def test_latency_on_virtual_time(tmp_path: Path, autojump_clock: object) -> None:
    faults = ImageFaults(latency=10, rules=[FaultRule("slow", latency=20)])
    async with in_process(tmp_path, faults) as (service, client):
        start = trio.current_time()
        answered: dict[str, tuple[int, float]] = {}

        async def post(key: str) -> None:
            response = await client.post("/v1/images/generate", json=image(key))
            answered[key] = (response.status_code, trio.current_time() - start)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(post, "story-1/fast")
            nursery.start_soon(post, "story-1/slow")
            await trio.sleep(5)
            assert (await service.stats())["inFlight"] == 2
        assert answered == {"story-1/fast": (201, 10.0), "story-1/slow": (201, 20.0)}

        # A repeat is answered at once, whatever the latency.
        before = trio.current_time()
        assert (
            await client.post("/v1/images/generate", json=image("story-1/slow"))
        ).status_code == 200
        assert trio.current_time() == before


async def test_the_wait_comes_before_the_failure(tmp_path: Path, autojump_clock: object) -> None:
    faults = ImageFaults(
        latency=5, fail_rate=1, rules=[FaultRule("bad", latency=7, fail_status=422)]
    )
    async with in_process(tmp_path, faults) as (service, client):
        start = trio.current_time()
        failed = await client.post("/v1/images/generate", json=image("k-1"))
        error_of(failed, 503, "GENERATION_FAILED")
        assert trio.current_time() - start == 5
        rule = await client.post("/v1/images/generate", json=image("k-bad"))
        error_of(rule, 422, "GENERATION_FAILED")
        assert trio.current_time() - start == 12
        assert await service.counts() == {
            "k-1": {"requests": 1, "generations": 0},
            "k-bad": {"requests": 1, "generations": 0},
        }


async def test_concurrent_requests_for_one_key_wait_for_the_first(
    tmp_path: Path, autojump_clock: object
) -> None:
    async with in_process(tmp_path, ImageFaults(latency=10)) as (service, client):
        start = trio.current_time()
        answers: list[tuple[int, float, str]] = []

        async def post() -> None:
            response = await client.post("/v1/images/generate", json=image("story-1/cover"))
            answers.append(
                (response.status_code, trio.current_time() - start, response.json()["id"])
            )

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(post)
        assert sorted(code for code, _, _ in answers) == [200] * 19 + [201]
        assert {when for _, when, _ in answers} == {10.0}  # one wait, not twenty in a row
        assert len({image_id for _, _, image_id in answers}) == 1
        assert await service.counts() == {"story-1/cover": {"requests": 20, "generations": 1}}


# -- several services, restarts, errors --------------------------------------------------------


async def test_two_services_on_one_file_and_blob_dir_generate_a_key_once(
    db: Path, blob_dir: Path
) -> None:
    # The per-process key lock cannot see the other process: the table's unique key decides.
    faults = ImageFaults(latency=0.01)
    async with trio.open_nursery() as nursery:
        urls = [
            await nursery.start(partial(serve_images, db, blob_dir, faults=faults))
            for _ in range(2)
        ]
        async with httpx.AsyncClient(timeout=10) as client:
            body = image("story-shared/page-1")
            responses = await post_at_once(client, "/v1/images/generate", body, times=5, urls=urls)
            codes = sorted(r.status_code for r in responses)
            assert codes.count(201) == 1
            assert codes.count(200) == 9
            assert len({r.json()["id"] for r in responses}) == 1
            assert (await client.get(f"{urls[1]}/stats")).json()["generations"] == 1
            key_counts = (await client.get(f"{urls[0]}/v1/images/counts")).json()["keys"]
            assert key_counts == {"story-shared/page-1": {"requests": 10, "generations": 1}}
        nursery.cancel_scope.cancel()
    assert len(blob_files(blob_dir)) == 1  # both rendered the same bytes: one blob


async def test_state_survives_a_restart(db: Path, blob_dir: Path) -> None:
    async with served(ImageService(db, blob_dir)) as client:
        first = await client.post("/v1/images/generate", json=image())
    assert first.status_code == 201

    async with ImageService(db, blob_dir) as service:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=service), base_url="http://images.test"
        ) as client:
            again = await client.post("/v1/images/generate", json=image())
            assert (again.status_code, again.json()) == (200, first.json())
            blob = await client.get(f"/v1/blobs/{first.json()['object_key']}")
            assert hashlib.sha256(blob.content).hexdigest() == first.json()["sha256"]
        assert await service.stats() == totals(generations=1, requests=2, repeats=1)


async def test_counts_by_prefix(client: httpx.AsyncClient) -> None:
    for key in ("story-1/p1", "story-1/p2", "story-10/p1", "st%ry_1/p1"):
        assert (await client.post("/v1/images/generate", json=image(key))).status_code == 201
    assert set(await counts(client)) == {"story-1/p1", "story-1/p2", "story-10/p1", "st%ry_1/p1"}
    assert set(await counts(client, "story-1/")) == {"story-1/p1", "story-1/p2"}
    assert set(await counts(client, "st%ry_")) == {"st%ry_1/p1"}  # no LIKE wildcards
    assert await counts(client, "nothing") == {}
    bad = await client.get("/v1/images/counts", params={"prefix": "a", "colour": "red"})
    assert [d["field"] for d in error_of(bad, 400, "VALIDATION_ERROR")["details"]] == ["colour"]
    twice = await client.get("/v1/images/counts?prefix=a&prefix=b")
    error_of(twice, 400, "VALIDATION_ERROR")


async def test_an_unexpected_error_is_500_and_stores_nothing(
    db: Path, blob_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(data: bytes, *, extension: str) -> str:
        raise OSError("disk on fire")

    service = ImageService(db, blob_dir)
    async with served(service) as client:
        with monkeypatch.context() as patch:
            patch.setattr(service.blobs, "put", broken)
            response = await client.post("/v1/images/generate", json=image())
        hidden_and_logged(response, caplog, "disk on fire")
        assert (await client.post("/v1/images/generate", json=image())).status_code == 201
        assert (await stats(client))["failures"] == 1


async def test_startup_errors_reach_the_caller(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        with pytest.raises(sqlite3.OperationalError):
            await nursery.start(serve_images, tmp_path / "missing-dir" / "i.db", tmp_path)
        with pytest.raises(TypeError, match="BlobStore"):
            ImageService(tmp_path / "i.db", 42)  # type: ignore[arg-type]
        nursery.cancel_scope.cancel()


async def test_quiet_by_default(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    await expect_quiet_logs(client, caplog, "/v1/images/generate", image(), 201)


# -- command line ----------------------------------------------------------------------------


async def test_module_serves_until_sigterm(db: Path, blob_dir: Path) -> None:
    arguments = ["--db", str(db), "--blobs", str(blob_dir), "--fail-match", "page-13"]
    async with serving_module("sluiceway.apps.imagegen", *arguments) as (base, line):
        assert line.startswith("image service listening on http://127.0.0.1:")
        assert line.endswith(f"(db {db}, blobs {blob_dir})")
        async with httpx.AsyncClient(base_url=base) as client:
            assert (await client.get("/health")).json() == {"status": "ok"}
            unlucky = await client.post("/v1/images/generate", json=image("story-1/page-13"))
            error_of(unlucky, 500, "GENERATION_FAILED")
            fine = await client.post("/v1/images/generate", json=image("story-1/page-12"))
            assert fine.status_code == 201


def test_a_bad_argument_exits_with_2(tmp_path: Path) -> None:
    paths = ["--db", str(tmp_path / "i.db"), "--blobs", str(tmp_path / "b")]
    result = subprocess.run(
        [sys.executable, "-m", "sluiceway.apps.imagegen", *paths, "--fail-rate", "2"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "usage:" in result.stderr
    assert "fail_rate" in result.stderr
    assert not (tmp_path / "i.db").exists()


@pytest.mark.parametrize(
    "arguments",
    [
        ["--fail-status", "200"],
        ["--latency", "-1"],
        ["--port", "not-a-port"],
        ["--fail-match", ""],
        ["--max-body-bytes", "0"],
    ],
    ids=["fail-status", "latency", "port", "empty match", "max-body-bytes"],
)
def test_bad_arguments(
    tmp_path: Path, arguments: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    paths = ["--db", str(tmp_path / "i.db"), "--blobs", str(tmp_path / "b")]
    with pytest.raises(SystemExit) as exited:
        main([*paths, *arguments])
    assert exited.value.code == 2
    assert "usage:" in capsys.readouterr().err
    assert not (tmp_path / "i.db").exists()
    with pytest.raises(SystemExit):
        main(["--db", str(tmp_path / "i.db")])  # --blobs is required
