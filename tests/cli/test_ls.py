"""``sluiceway ls``: the runs of a served store, newest first, filtered and paged."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from sluiceway.cli import main
from tests.cli.test_remote_cli import Served, call, run_cli, serve, stop


@pytest.fixture(scope="module")
def listed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = serve(tmp_path_factory.mktemp("ls") / "store.db", "--token", "s3cret")
    yield served
    code, err = stop(served)
    assert code == 0, err


def test_ls_lists_filters_and_pages(capsys: pytest.CaptureFixture[str], listed: Served) -> None:
    code, out, err = run_cli(capsys, listed, "ls")
    assert (code, out, err) == (0, "", "no run matches\n")
    ids = [call(capsys, listed, "fanout", {"count": 2})["entity_id"] for _ in range(3)]
    code, out, err = run_cli(capsys, listed, "ls", "--json")
    assert code == 0, err
    runs = [json.loads(line) for line in out.splitlines()]
    assert [r["id"] for r in runs] == ids[::-1]  # newest first
    assert {r["type"] for r in runs} == {"FanOut"}
    code, out, err = run_cli(capsys, listed, "ls", "--limit", "2")
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(ids[2])
    assert lines[0].split()[1:3] == ["PENDING", "FanOut"]
    assert "(more: sluiceway ls --cursor '" in err
    cursor = err.split("--cursor '", 1)[1].split("'", 1)[0]
    code, out, _ = run_cli(capsys, listed, "ls", "--limit", "2", "--cursor", cursor)
    assert [line.split()[0] for line in out.splitlines()] == [ids[0]]
    code, out, _ = run_cli(capsys, listed, "ls", "--limit", "1", "--all")
    assert [line.split()[0] for line in out.splitlines()] == ids[::-1]
    code, out, _ = run_cli(capsys, listed, "ls", "--name", ids[1][:13].upper())  # a name's part
    assert [line.split()[0] for line in out.splitlines()] == [ids[1]]
    code, out, _ = run_cli(capsys, listed, "ls", "--type", "Leaf")
    assert (code, out) == (0, "")
    code, _, err = run_cli(capsys, listed, "ls", "--status", "DONE")
    assert code == 1
    assert "unknown status 'DONE'" in err
    assert err.count("\n") == 1  # one line
    code, _, err = run_cli(capsys, listed, "ls", "--limit", "0")
    assert code == 2
    assert "--limit must be from 1 to 200" in err


def test_ls_needs_the_token(capsys: pytest.CaptureFixture[str], listed: Served) -> None:
    code = main(["ls", "--url", listed.url, "--token", "wrong", "--reconnect-timeout", "0"])
    assert code == 1
    assert "refused the token" in capsys.readouterr().err
