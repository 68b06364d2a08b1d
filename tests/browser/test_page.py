"""The server's page in a real Chromium: it connects with the token from its address, follows a
run to the end with the store's counts, cancels a run, answers a waiting entity, retries a
failed one, resumes after a dropped connection with no gap and no duplicate, and a page of
another origin gets nothing. Screenshots of these moments go to ``build/screenshots``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import trio
from benchmarks.pages import sampled_problem

from sluiceway import EntityFailedError, EntityStatus
from sluiceway.apps.notification import Faults
from tests.apps.campaign_stack import campaign_stack
from tests.browser.browser import in_browser, screenshot
from tests.entities import workflows
from tests.server.conftest import Chatter, Served, serving

TOKEN = "page-token"


def page_url(served: Served, token: str = TOKEN) -> str:
    return served.url.replace("ws://", "http://", 1) + f"/#token={token}"


def wait_connected(page: Any) -> None:
    page.wait_for_function(
        "['connected', 'resumed'].includes(document.getElementById('connection').dataset.state)"
    )


def open_run(page: Any, name: str) -> None:
    page.locator("#runs-table tbody tr", has_text=name).first.click()
    page.wait_for_function(
        "(name) => document.getElementById('run-title').textContent.endsWith(name)", arg=name
    )


def root_status(page: Any) -> str:
    status: str = page.locator("#tree .node").first.locator(".status").text_content()
    return status


async def test_the_page_follows_a_run_to_its_end_with_the_stores_counts(tmp_path: Path) -> None:
    async with serving(tmp_path / "page.db", token=TOKEN) as served:
        runtime = served.runtime
        runtime.gauges.watch(workflows.GLOBAL, name="global")
        fan = await runtime.create(
            "FanOut", {"count": 60, "per_parent": 4, "failing": [7, 8]}, name="spring-fanout"
        )
        await runtime.create("Leaf", {"value": 1}, name="a-pending-leaf")

        def scenario(page: Any) -> dict[str, Any]:
            page.goto(page_url(served))
            wait_connected(page)
            assert "server-tests" in page.text_content("#app")
            page.wait_for_selector("#runs-table tbody tr[data-id]")
            names = page.locator("#runs-table tbody tr td:first-child").all_text_contents()
            assert names == ["a-pending-leaf", "spring-fanout"]  # newest first
            trio.from_thread.run(runtime.start, fan.id)
            open_run(page, "spring-fanout")
            page.wait_for_function(
                "document.querySelector('#tree .node .status').textContent === 'COMPLETED'",
                timeout=60_000,
            )
            # The tree redraws at most every second: wait for the counts of the end.
            page.wait_for_function(
                "document.querySelector('#tree .node .counts')"
                "?.textContent.includes('58 COMPLETED, 2 FAILED')"
            )
            screenshot(page, "run-completed")
            counts = page.locator("#tree .node").first.locator(".counts").text_content()
            page.locator("#log-type").select_option("ERROR")
            # The log's samples come every half second, after the tree may have shown the
            # end: wait for the run's last envelope, then count (sampling keeps every error).
            page.wait_for_function("window.sluiceway.view.subscription === null")  # its end
            page.wait_for_function("window.sluiceway.view.dirty.size === 0")  # and drawn
            page.wait_for_function(
                "(items => items.length > 0 && items.every(li => li.dataset.type === 'ERROR'))"
                "([...document.querySelectorAll('#log li:not(.gap)')])"
            )
            errors = page.locator("#log li:not(.gap)").count()
            page.locator("#filter-status").select_option("COMPLETED")
            page.wait_for_function(
                "document.querySelectorAll('#runs-table tbody tr[data-id]').length === 1"
            )
            filtered = page.locator("#runs-table tbody tr td:first-child").all_text_contents()
            view = page.evaluate(
                "({received: window.sluiceway.view.received,"
                " batches: window.sluiceway.view.batches,"
                " duplicates: window.sluiceway.view.duplicates})"
            )
            gauges = page.locator("#gauges").text_content()
            return {
                "counts": counts, "errors": errors, "filtered": filtered, "view": view,
                "gauges": gauges,
            }  # fmt: skip

        seen = await in_browser(scenario)
        by_status = {s.value: n for s, n in (await runtime.store.count_children(fan.id)).items()}
        assert by_status == {"COMPLETED": 58, "FAILED": 2}
        assert seen["counts"] == "60 children: 58 COMPLETED, 2 FAILED"
        assert seen["errors"] == 2  # one ERROR envelope per failed child
        assert seen["filtered"] == ["spring-fanout"]
        stored = [e.seq for e in await runtime.envelopes(fan.id)]
        # Sampled: each batch holds the newest of what came since the one before and counts
        # the rest, so together they account for every envelope, once, in order.
        view = seen["view"]
        assert sampled_problem(view["received"], view["batches"], stored) is None
        assert view["duplicates"] == 0
        assert "global:" in seen["gauges"]


async def test_the_page_watches_a_campaign_send_its_emails(tmp_path: Path) -> None:
    """Seed 000's campaign application: the page follows a campaign to its end, with the
    store's counts, and shows the send limits while it sends."""
    slow = Faults(latency=0.2)  # 30 emails, 3 at a time: 2 s of sending to watch
    async with campaign_stack(tmp_path, faults=slow, per_campaign=3, global_limit=5) as stack:
        await stack.contacts(30, ["spring"])
        campaign = await stack.campaign("spring", await stack.template(), ["spring"])
        url = stack.url.replace("ws://", "http://", 1) + "/"
        sends: list[str] = []

        def scenario(page: Any) -> str:
            page.goto(url)
            wait_connected(page)
            trio.from_thread.run(stack.client.call, "campaigns/execute", {"campaign_id": campaign})
            page.wait_for_function(
                "document.querySelector('#runs-table tbody tr td')?.textContent"
                " === 'campaign:spring'"
            )
            open_run(page, "campaign:spring")
            page.wait_for_function(
                "[...document.querySelectorAll('#gauges .gauge')]"
                ".some(g => g.textContent.startsWith('campaign:spring sends'))"
            )
            sends.append(page.locator("#gauges").text_content())
            page.wait_for_function(
                "document.querySelector('#tree .node .counts')"
                "?.textContent === '30 children: 30 COMPLETED'"
                " && document.querySelector('#tree .node .status').textContent === 'COMPLETED'",
                timeout=60_000,
            )
            screenshot(page, "campaign-completed")
            counts: str = page.locator("#tree .node").first.locator(".counts").text_content()
            return counts

        counts = await in_browser(scenario)
        by_status = await stack.runtime.store.count_children(campaign)
        assert counts == f"30 children: {by_status[EntityStatus.COMPLETED]} COMPLETED"
        assert (await stack.stats())["sends"] == 30
        assert "sends: " in sends[0]
        assert "/ 5 slots" in sends[0]
        assert "/ 3 slots" in sends[0]


async def test_cancel_answer_and_retry_from_the_page(tmp_path: Path) -> None:
    async with serving(tmp_path / "page.db", token=TOKEN) as served:
        runtime = served.runtime
        asker = await runtime.create("Asker", {}, name="needs-an-answer")
        stuck = await runtime.create("Leaf", {"value": 1, "gate": True}, name="stuck-leaf")
        flaky = await runtime.create("Leaf", {"value": 5, "fail": True}, name="flaky-leaf")
        for entity in (asker, stuck, flaky):
            await runtime.start(entity.id)
        with pytest.raises(EntityFailedError):
            await runtime.wait(flaky.id)
        await runtime.update_data(flaky.id, fail=False)  # the cause is fixed

        def scenario(page: Any) -> None:
            page.on("dialog", lambda dialog: dialog.accept())  # "Cancel ...?"
            page.goto(page_url(served))
            wait_connected(page)
            # Answer the waiting entity: its prompt is shown.
            open_run(page, "needs-an-answer")
            page.wait_for_selector("#message-form:not([hidden])")
            page.wait_for_function(
                "document.getElementById('message-prompt').textContent"
                " === 'it asks: approve needs-an-answer?'"
            )
            screenshot(page, "waiting-for-a-message")
            page.fill("#message-text", "yes")
            page.fill("#message-data", '{"by": "the page"}')
            page.click("#message-form button[type=submit]")
            page.wait_for_function(
                "document.querySelector('#tree .status').textContent === 'COMPLETED'"
            )
            # Cancel the stuck one.
            open_run(page, "stuck-leaf")
            page.wait_for_selector("#action-cancel:not([disabled])")
            page.click("#action-cancel")
            page.wait_for_function(
                "document.querySelector('#tree .status').textContent === 'CANCELLED'"
            )
            assert page.is_disabled("#action-cancel")
            # Retry the failed one.
            open_run(page, "flaky-leaf")
            page.wait_for_selector("#action-retry:not([disabled])")
            page.click("#action-retry")
            page.wait_for_function(
                "document.querySelector('#tree .status').textContent === 'COMPLETED'"
            )
            screenshot(page, "retried")

        await in_browser(scenario)
        assert (await runtime.wait(asker.id))["answer"] == "yes"
        assert (await runtime.get(asker.id)).result["data"] == {"by": "the page"}
        assert (await runtime.get(stuck.id)).status.value == "CANCELLED"
        assert await runtime.wait(flaky.id) == {"name": "flaky-leaf", "value": 10}


async def test_a_dropped_connection_resumes_with_no_gap_and_no_duplicate(tmp_path: Path) -> None:
    async with serving(tmp_path / "page.db", token=TOKEN) as served:
        runtime = served.runtime
        chatter = await runtime.create(Chatter, {"count": 200, "pause_after": 80}, name="chatty")
        await runtime.start(chatter.id)
        gate = workflows.GATES.setdefault("chatty", trio.Event())

        def scenario(page: Any) -> dict[str, Any]:
            page.goto(page_url(served))
            wait_connected(page)
            page.check("#log-every")  # every envelope, not a sample
            open_run(page, "chatty")
            page.wait_for_function("window.sluiceway.view.received.length >= 81")
            page.evaluate("window.sluiceway.connection().drop()")
            page.wait_for_function(
                "document.getElementById('connection').dataset.state === 'reconnecting'"
            )
            trio.from_thread.run_sync(gate.set)  # the run goes on while the page is away
            page.wait_for_function(
                "document.getElementById('connection').dataset.state === 'resumed'"
            )
            page.wait_for_function(
                "document.querySelector('#tree .status').textContent === 'COMPLETED'"
            )
            page.wait_for_function("window.sluiceway.view.received.length >= 203")
            # The display is redrawn on a timer: wait for it to show the last seq.
            page.wait_for_function(
                "document.getElementById('last-seq').textContent"
                " === String(window.sluiceway.view.lastSeq)"
            )
            screenshot(page, "resumed")
            return page.evaluate(  # type: ignore[no-any-return]
                "({received: window.sluiceway.view.received,"
                " duplicates: window.sluiceway.view.duplicates,"
                " seq: document.getElementById('last-seq').textContent})"
            )

        seen = await in_browser(scenario)
        stored = [e.seq for e in await runtime.envelopes(chatter.id)]
        assert seen["received"] == stored  # every envelope once, in order: no gap, no duplicate
        assert seen["duplicates"] == 0
        assert seen["seq"] == str(stored[-1])


async def test_a_busy_run_is_sampled_and_the_log_says_what_it_left_out(tmp_path: Path) -> None:
    async with serving(tmp_path / "page.db", token=TOKEN) as served:
        runtime = served.runtime
        chatter = await runtime.create(Chatter, {"count": 300}, name="busy")
        await runtime.start(chatter.id)
        await runtime.wait(chatter.id)

        def scenario(page: Any) -> dict[str, Any]:
            page.goto(page_url(served))
            wait_connected(page)
            open_run(page, "busy")
            page.wait_for_function("document.querySelector('#log li.gap')")
            page.wait_for_function(
                "document.querySelector('#tree .status').textContent === 'COMPLETED'"
            )
            screenshot(page, "sampled")
            return page.evaluate(  # type: ignore[no-any-return]
                "({received: window.sluiceway.view.received,"
                " batches: window.sluiceway.view.batches,"
                " skipped: window.sluiceway.view.skipped,"
                " gap: document.querySelector('#log li.gap').textContent,"
                " scope: document.getElementById('log-scope').textContent})"
            )

        seen = await in_browser(scenario)
        stored = [e.seq for e in await runtime.envelopes(chatter.id)]
        assert sampled_problem(seen["received"], seen["batches"], stored) is None
        assert seen["skipped"] == len(stored) - len(seen["received"]) > 0
        # each batch: the newest 25, and up to 25 older errors, prompts and answers
        assert len(seen["received"]) <= 2 * 25 * len(seen["batches"])
        assert seen["received"][-1] == stored[-1]
        assert seen["gap"].endswith("envelopes not shown (sampled: the tree counts every entity)")
        assert seen["scope"] == "of every entity of the run, at most 25 every 1 s"


async def test_a_page_of_another_origin_and_a_wrong_token_get_nothing(tmp_path: Path) -> None:
    async with serving(tmp_path / "page.db", token=TOKEN) as served:
        hostile = (
            "<!DOCTYPE html><title>elsewhere</title><script>"
            "window.result = {hello: false, closed: false};"
            f"const ws = new WebSocket({json.dumps(served.url)}, "
            f"['sluiceway.v1', 'bearer.{TOKEN}']);"
            "ws.onmessage = () => { window.result.hello = true; };"
            "ws.onclose = () => { window.result.closed = true; };"
            "</script>"
        )

        def scenario(page: Any) -> dict[str, Any]:
            # A page of http://elsewhere.test that knows the token still gets nothing.
            page.route(
                "http://elsewhere.test/",
                lambda route: route.fulfill(body=hostile, content_type="text/html"),
            )
            page.goto("http://elsewhere.test/")
            page.wait_for_function("window.result.closed")
            foreign = page.evaluate("window.result")
            # The server's own page with a wrong token says it was refused.
            page.goto(page_url(served, token="wrong"))
            page.wait_for_function(
                "document.getElementById('connection').dataset.state === 'refused'"
            )
            screenshot(page, "refused")
            return {"foreign": foreign}

        seen = await in_browser(scenario)
        assert seen["foreign"] == {"hello": False, "closed": True}


async def test_names_and_data_are_shown_as_text(tmp_path: Path) -> None:
    """Untrusted text never becomes markup: a name and data that are HTML stay text."""
    async with serving(tmp_path / "page.db", token=TOKEN) as served:
        runtime = served.runtime
        evil = '<img src=x onerror="window.pwned=1">'
        leaf = await runtime.create("Leaf", {"value": 1, "note": evil}, name=evil)
        await runtime.start(leaf.id)
        await runtime.wait(leaf.id)

        def scenario(page: Any) -> dict[str, Any]:
            page.goto(page_url(served))
            wait_connected(page)
            open_run(page, evil)
            page.wait_for_function("document.getElementById('detail-json').textContent.length > 0")
            return page.evaluate(
                "({pwned: window.pwned === 1, images: document.querySelectorAll('main img').length,"
                " detail: document.getElementById('detail-json').textContent,"
                " title: document.getElementById('run-title').textContent})"
            )

        seen = await in_browser(scenario)
        assert seen["pwned"] is False
        assert seen["images"] == 0
        assert seen["title"] == f"Leaf {evil}"
        assert '"note": "<img src=x onerror=' in seen["detail"]
