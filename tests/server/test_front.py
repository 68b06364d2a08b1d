"""The server's one port: the page's files over plain HTTP next to the protocol's WebSocket."""

from __future__ import annotations

import httpx
import trio

from tests.server.conftest import TIMEOUT, Served, call, hello, open_raw


def http_url(served: Served) -> str:
    return served.url.replace("ws://", "http://", 1)


async def test_the_page_is_served_with_headers_that_keep_it_to_itself(served: Served) -> None:
    with trio.fail_after(TIMEOUT):
        async with httpx.AsyncClient(base_url=http_url(served)) as http:
            page = await http.get("/")
            assert page.status_code == 200
            assert page.headers["content-type"] == "text/html; charset=utf-8"
            assert "<script" in page.text
            policy = page.headers["content-security-policy"]
            assert "script-src 'self'" in policy
            assert "frame-ancestors 'none'" in policy
            assert page.headers["x-content-type-options"] == "nosniff"
            assert page.headers["connection"] == "close"
            script = await http.get("/app.js?v=1")
            assert script.headers["content-type"] == "text/javascript; charset=utf-8"
            assert (await http.get("/style.css")).status_code == 200
            head = await http.head("/index.html")
            assert head.status_code == 200
            assert head.headers["content-length"] == str(len(page.content))
            assert head.content == b""
            for path in ("/../pyproject.toml", "/static/app.js", "/%2e%2e/x", "/nothing"):
                assert (await http.get(path)).status_code == 404, path
            refused = await http.post("/", content=b"x")
            assert (refused.status_code, refused.headers["allow"]) == (405, "GET, HEAD")
        # The protocol is still there, on any path.
        async with open_raw(served.url + "/anything") as ws:
            await hello(ws)
            assert await call(ws, "ping", 1) == {"pong": True}
