"""``--db PATH|URL``: the commands take a PostgreSQL URL as well as a SQLite file, and never
print the URL's password.

The commands given a URL here connect to a closed port (nothing listens on port 1 of the
loopback address), so they fail: what is checked is how they report it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from sluiceway.cli import main
from sluiceway.cli._common import redact, scrub, store_target

CLOSED = "postgresql://user:secret@127.0.0.1:1/x"


@pytest.mark.parametrize(
    ("target", "shown"),
    [
        ("postgresql://user:secret@127.0.0.1:1/x", "postgresql://user:***@127.0.0.1:1/x"),
        ("postgres://user:secret@db/app", "postgres://user:***@db/app"),
        ("postgresql://user@db/app", "postgresql://user@db/app"),
        ("postgresql://db:5432/app", "postgresql://db:5432/app"),
        ("postgresql:///app?host=/run/postgresql", "postgresql:///app?host=/run/postgresql"),
        ("postgresql://user:p%40ss%3Aw@db/app", "postgresql://user:***@db/app"),
        # Unencoded, a password's '@', '/', '?' or '#' is hidden whole, never in part.
        ("postgresql://user:p@ss@db/app", "postgresql://user:***@db/app"),
        ("postgresql://user:pa/ss@db/app", "postgresql://user:***@db/app"),
        ("postgresql://user:pa?ss@db/app", "postgresql://user:***@db/app"),
        ("postgresql://user:pa#ss@db/app", "postgresql://user:***@db/app"),
        ("postgresql://user:@db/app", "postgresql://user:***@db/app"),
        (
            "postgresql://user:secret@h1:5432,h2:5433/app?sslmode=require",
            "postgresql://user:***@h1:5432,h2:5433/app?sslmode=require",
        ),
        (
            "postgresql://db/app?user=me&password=secret&sslmode=require",
            "postgresql://db/app?user=me&password=***&sslmode=require",
        ),
        ("postgresql://db?password=secret", "postgresql://db?password=***"),
        # A path is printed as it is, whatever it holds.
        ("app.db", "app.db"),
        ("/srv/me:secret@host/app.db", "/srv/me:secret@host/app.db"),
    ],
)
def test_redact_hides_the_password_of_a_url(target: str, shown: str) -> None:
    assert redact(target) == shown


def test_scrub_hides_the_password_wherever_a_message_quotes_it() -> None:
    target = "postgresql://me:s%3Acret@db/app"
    message = (
        f'cannot connect to {target}: password authentication failed ("s:cret", '
        '"s%3Acret")\n\tIs the server running?'
    )
    assert scrub(message, target) == (
        'cannot connect to postgresql://me:***@db/app: password authentication failed ("***", '
        '"***") Is the server running?'
    )
    assert scrub("no entity store at 'a  b.db'", "a  b.db") == "no entity store at 'a  b.db'"


def test_a_url_is_not_expanded_like_a_path(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    monkeypatch.setenv("HOME", "/home/me")
    assert store_target("~/app.db", parser) == "/home/me/app.db"
    assert store_target("postgresql://~me@db/app", parser) == "postgresql://~me@db/app"
    monkeypatch.setenv("SLUICEWAY_DB", "postgres://~me@db/app")
    assert store_target(None, parser) == "postgres://~me@db/app"


def one_line_error(capsys: pytest.CaptureFixture[str], command: str) -> str:
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"sluiceway {command}: ")
    assert err.count("\n") == 1, err  # one line, no traceback
    assert "secret" not in err
    return err


def test_graph_of_an_unreachable_url_exits_1_without_the_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["graph", "--db", CLOSED, "node", "foo"]) == 1
    one_line_error(capsys, "graph")


def test_graph_does_not_look_for_a_file_named_like_a_url(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A directory of that name would be "a directory, not an entity store" for a path.
    monkeypatch.chdir(tmp_path)
    os.makedirs("postgresql:/user:secret@127.0.0.1:1/x")
    assert main(["graph", "--db", CLOSED, "tree", "foo"]) == 1
    assert "is a directory" not in one_line_error(capsys, "graph")


@pytest.mark.parametrize("command", ["worker", "serve"])
def test_serve_and_worker_on_an_unreachable_url_exit_1_without_the_password(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    argv = [command, "--app", "tests.cli.worker_app:app", "--db", CLOSED]
    if command == "serve":
        argv += ["--port", "0"]
    assert main(argv) == 1
    one_line_error(capsys, command)
