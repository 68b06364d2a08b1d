"""``sluiceway serve`` in a child process, driven by ``sluiceway run/call/send/cancel``
in this one (``main()`` returns the exit code; output is read from capsys)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from trio_websocket import ConnectionRejected

from sluiceway.cli import main
from sluiceway.client import ConnectionRefusedByServerError

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret"


class Served:
    def __init__(self, process: subprocess.Popen[str], url: str) -> None:
        self.process, self.url = process, url


def serve(db: Path, *extra: str, app: str = "tests.cli.remote_app:app") -> Served:
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "sluiceway", "serve"),
            *("--app", app, "--db", str(db), "--port", "0", *extra),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait(30)
        raise AssertionError(f"serve exited: {process.stderr.read() if process.stderr else ''}")
    assert line.startswith("sluiceway serve: serving cli-test on ws://127.0.0.1:"), line
    return Served(process, line.split(" on ", 1)[1].split(" ", 1)[0])


def stop(served: Served, signum: int = signal.SIGTERM) -> tuple[int, str]:
    served.process.send_signal(signum)
    _, err = served.process.communicate(timeout=60)
    return served.process.returncode, err


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = serve(tmp_path_factory.mktemp("serve") / "store.db", "--token", TOKEN)
    yield served
    code, err = stop(served)
    assert code == 0, err


def run_cli(capsys: pytest.CaptureFixture[str], server: Served, *args: str) -> tuple[int, str, str]:
    code = main([*args[:1], "--url", server.url, "--token", TOKEN, *args[1:]])
    out, err = capsys.readouterr()
    return code, out, err


def call(capsys: pytest.CaptureFixture[str], server: Served, endpoint: str, body: Any) -> Any:
    code, out, err = run_cli(capsys, server, "call", endpoint, "--body", json.dumps(body))
    assert code == 0, err
    return json.loads(out)


def test_run_json_streams_every_envelope_once_and_in_order(
    capsys: pytest.CaptureFixture[str], server: Served
) -> None:
    entity = call(capsys, server, "fanout", {"count": 12})["entity_id"]
    code, out, err = run_cli(capsys, server, "run", entity, "--json")
    assert code == 0, err
    envelopes = [json.loads(line) for line in out.splitlines()]
    seqs = [e["seq"] for e in envelopes]
    assert seqs == sorted(set(seqs))
    children = {e["entity_id"] for e in envelopes if e["entity_id"] != entity}
    assert len(children) == 12
    last = envelopes[-1]
    assert (last["entity_id"], last["type"], last["status"]) == (entity, "STATUS", "COMPLETED")

    # --after: only what came later; a completed run is not started again.
    code, out, _ = run_cli(capsys, server, "run", entity, "--json", "--after", str(seqs[-3]))
    assert code == 0
    assert [json.loads(line)["seq"] for line in out.splitlines()] == seqs[-2:]


def test_run_shows_live_progress_and_prints_the_result(
    capsys: pytest.CaptureFixture[str], server: Served
) -> None:
    entity = call(capsys, server, "fanout", {"count": 6, "failing": [2]})["entity_id"]
    code, out, err = run_cli(capsys, server, "run", entity)
    assert code == 0
    assert json.loads(out) == {"ok": 5, "failed": 1, "total": 26, "status": "completed_with_errors"}
    assert "6/6 children finished" in err
    assert "Leaf: 1 failed" in err or "1 failed" in err
    assert "COMPLETED" in err


def test_send_delivers_a_message_to_a_waiting_entity(
    capsys: pytest.CaptureFixture[str], server: Served
) -> None:
    entity = call(capsys, server, "ask", {})["entity_id"]
    code, out, err = run_cli(capsys, server, "send", entity, "yes", "--data", '{"by": "cli"}')
    assert code == 0, err
    assert isinstance(json.loads(out)["message_id"], int)
    code, out, err = run_cli(capsys, server, "run", entity, "--no-start")
    assert code == 0, err
    assert json.loads(out)["answer"] == "yes"
    assert json.loads(out)["data"] == {"by": "cli"}


def test_cancel_stops_a_run(capsys: pytest.CaptureFixture[str], server: Served) -> None:
    entity = call(capsys, server, "ask", {})["entity_id"]
    code, out, err = run_cli(capsys, server, "cancel", entity)
    assert code == 0, err
    assert json.loads(out) == {"cancelled": [entity]}
    code, _, err = run_cli(capsys, server, "run", entity, "--json")
    assert code == 1
    assert "cancelled" in err


def test_errors_are_reported_with_exit_codes(
    capsys: pytest.CaptureFixture[str], server: Served
) -> None:
    code, _, err = run_cli(capsys, server, "call", "refuse", "--body", "{}")
    assert code == 1
    assert "endpoint_error: this endpoint refuses everything" in err
    code, _, err = run_cli(capsys, server, "call", "nothing-here")
    assert code == 1
    assert "unknown_endpoint" in err
    code, _, err = run_cli(capsys, server, "call", "refuse", "--body", "{not json")
    assert code == 2
    assert "--body is not JSON" in err
    code, _, err = run_cli(capsys, server, "call", "refuse", "--body", "[1]")
    assert code == 2
    code, _, err = run_cli(capsys, server, "run", "no-such-entity")
    assert (code, err.count("not_found")) == (1, 1)
    code, _, err = run_cli(capsys, server, "send", "no-such-entity", "hi", "--data", "{x")
    assert code == 2
    code, _, err = run_cli(capsys, server, "run", "x", "--after", "-1")
    assert code == 2


def test_without_the_token_nothing_is_readable(
    capsys: pytest.CaptureFixture[str], server: Served
) -> None:
    for token, what in (("", "requires a token"), ("wrong", "refused the token")):
        code = main(
            ["call", "fanout", "--url", server.url, "--token", token, "--reconnect-timeout", "0"]
        )
        _, err = capsys.readouterr()
        assert code == 1
        assert err == (
            f"sluiceway call: the server at {server.url} {what} (401 unauthorized): give its "
            "token with --token or $SLUICEWAY_TOKEN\n"
        )


@pytest.mark.parametrize(
    ("url", "fix"),
    [
        ("http://127.0.0.1:8765", ": use ws://127.0.0.1:8765"),
        ("https://example.com/ws", ": use wss://example.com/ws"),
        ("127.0.0.1:8765", ""),
        ("ws://", ""),
        ("ws://127.0.0.1:port", ""),
    ],
)
def test_a_url_that_is_not_a_websocket_url_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], url: str, fix: str
) -> None:
    assert main(["run", "some-id", "--url", url]) == 2
    assert capsys.readouterr().err == (
        f"sluiceway run: --url: a server URL is ws://HOST:PORT or wss://HOST:PORT, got "
        f"{url!r}{fix}\n"
    )


def test_a_url_from_the_environment_is_checked_too(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLUICEWAY_URL", "http://127.0.0.1:8765")
    assert main(["cancel", "some-id"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sluiceway cancel: $SLUICEWAY_URL: a server URL is ws://HOST:PORT")
    assert err.count("\n") == 1


def test_a_refused_connection_is_one_line() -> None:
    """What the server says, not the HTTP exchange: a page of another origin (403), a body
    that is not JSON, a status without a name."""
    rejected = ConnectionRejected(
        403,
        ((b"content-type", b"application/json"),),
        b'{"error":{"code":"forbidden_origin","message":"pages of this origin may not connect"}}',
    )
    error = ConnectionRefusedByServerError.of("ws://h:1", rejected)
    assert (error.status, error.code) == (403, "forbidden_origin")
    assert str(error) == (
        "the server at ws://h:1 refused the connection: HTTP 403 forbidden (forbidden_origin: "
        "pages of this origin may not connect)"
    )
    plain = ConnectionRefusedByServerError.of("ws://h:1", ConnectionRejected(418, (), b"teapot"))
    assert str(plain) == "the server at ws://h:1 refused the connection: HTTP 418 refused (teapot)"
    empty = ConnectionRefusedByServerError.of("ws://h:1", ConnectionRejected(503, (), None))
    assert str(empty) == (
        "the server at ws://h:1 refused the connection: HTTP 503 service unavailable"
    )


def test_wait_gives_a_server_that_is_starting_time_to_listen(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"ws://127.0.0.1:{port}"
    # Nothing listens: without --wait it fails at once, with --wait once the time is up.
    assert main(["call", "fanout", "--url", url]) == 1
    assert capsys.readouterr().err.startswith(f"sluiceway call: cannot connect to {url}")
    assert main(["call", "fanout", "--url", url, "--wait", "0.3"]) == 1
    assert "cannot connect" in capsys.readouterr().err
    assert main(["call", "fanout", "--url", url, "--wait", "-1"]) == 2
    assert "--wait must be >= 0" in capsys.readouterr().err
    # A server started just before: the command waits for it to listen.
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "sluiceway", "serve", "--app", "tests.cli.remote_app:app"),
            *("--db", str(tmp_path / "store.db"), "--port", str(port)),
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        code = main(["call", "fanout", "--url", url, "--wait", "30", "--body", '{"count": 1}'])
        assert code == 0, capsys.readouterr().err
        assert "entity_id" in capsys.readouterr().out
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err


def test_run_does_not_start_what_only_an_endpoint_starts(
    capsys: pytest.CaptureFixture[str], server: Served
) -> None:
    entity = call(capsys, server, "guarded", {})["entity_id"]
    code, out, err = run_cli(capsys, server, "run", entity)
    assert (code, out) == (1, "")
    assert err == (
        "sluiceway run: not_runnable: cli-test does not let start begin a run of Guarded "
        f"{entity!r} (PENDING): the application's endpoints start it\n"
    )
    # Started by its endpoint, it is followed to its end.
    entity = call(capsys, server, "guarded", {"start": True})["entity_id"]
    code, out, err = run_cli(capsys, server, "run", entity)
    assert code == 0, err
    assert json.loads(out) == {"guarded": True}


def test_run_of_a_run_whose_result_says_failed_exits_1(
    capsys: pytest.CaptureFixture[str], server: Served
) -> None:
    body = {"status": "failed", "error": "every send failed"}
    entity = call(capsys, server, "outcome", body)["entity_id"]
    code, out, err = run_cli(capsys, server, "run", entity)
    assert code == 1
    assert json.loads(out) == body  # the result, all the same
    assert "COMPLETED" not in err
    assert f"Outcome {entity} FAILED" in err  # the live display's last line
    assert err.endswith(
        f"sluiceway run: Outcome {entity} failed: its run completed with status 'failed': "
        "every send failed\n"
    )
    code, out, err = run_cli(capsys, server, "run", entity, "--json")
    assert code == 1
    assert out.count("\n") > 1  # the envelopes
    assert err.count("\n") == 1
    # Any other status is the application's success.
    entity = call(capsys, server, "outcome", {"status": "completed_with_errors"})["entity_id"]
    code, out, err = run_cli(capsys, server, "run", entity)
    assert code == 0, err
    assert json.loads(out) == {"status": "completed_with_errors"}


def test_serve_refuses_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--app", "no_such_module:app", "--db", str(tmp_path / "x.db")]) == 1
    assert "no_such_module" in capsys.readouterr().err
    assert main(["serve", "--app", "json:dumps", "--db", str(tmp_path / "x.db")]) == 1
    assert main(["serve", "--app", "nocolon", "--db", str(tmp_path / "x.db")]) == 1
    assert main(["serve", "--app", "tests.cli.remote_app:app", "--port", "70000"]) == 2
    capsys.readouterr()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_serve_shuts_down_cleanly_on_a_signal(tmp_path: Path, signum: int) -> None:
    served = serve(tmp_path / "store.db")  # it listens, its signal handlers installed
    code, err = stop(served, signum)
    assert code == 0, err
    assert f"{signal.Signals(signum).name}: shutting down" in err


def _handshake_status(url: str, origin: str | None) -> int:
    """The HTTP status a WebSocket handshake with this Origin gets (a real socket)."""
    host, _, port = url.removeprefix("ws://").rpartition(":")
    request = (
        f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        + (f"Origin: {origin}\r\n" if origin is not None else "")
        + "\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(request.encode())
        head = b""
        while b"\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, head
            head += chunk
    return int(head.split()[1])


def test_serve_allow_origin(tmp_path: Path) -> None:
    served = serve(
        tmp_path / "store.db",
        *("--allow-origin", "https://app.example.com"),
        *("--allow-origin", "HTTP://LOCALHOST:3000"),
    )
    try:
        assert _handshake_status(served.url, "https://app.example.com") == 101
        assert _handshake_status(served.url, "http://localhost:3000") == 101
        assert _handshake_status(served.url, None) == 101
        assert _handshake_status(served.url, served.url.replace("ws:", "http:")) == 101
        assert _handshake_status(served.url, "https://evil.example") == 403
        assert _handshake_status(served.url, "null") == 403
    finally:
        code, err = stop(served)
    assert code == 0, err
    # Without the option only the server's own pages (and programs) connect.
    served = serve(tmp_path / "store.db")
    try:
        assert _handshake_status(served.url, "https://app.example.com") == 403
        assert _handshake_status(served.url, served.url.replace("ws:", "http:")) == 101
    finally:
        code, err = stop(served)
    assert code == 0, err


@pytest.mark.parametrize("origin", ["https://app.example.com/", "app.example.com", "null", ""])
def test_serve_refuses_a_malformed_origin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], origin: str
) -> None:
    argv = ["serve", "--app", "tests.cli.remote_app:app", "--db", str(tmp_path / "x.db")]
    assert main([*argv, "--allow-origin", origin]) == 2
    err = capsys.readouterr().err
    assert "--allow-origin" in err
    assert "origin" in err
