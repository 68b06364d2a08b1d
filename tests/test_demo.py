"""The fan-out demo runs end to end (in virtual time here)."""

from __future__ import annotations

import trio

from sluiceway.demos import fanout


async def test_demo_fan_out(autojump_clock: object) -> None:
    lines: list[str] = []
    results = await fanout.main(seed=7, out=lines.append)
    assert results["A"] == {"sent": 12, "failed": 0}
    assert results["B"] == {"sent": 7, "failed": 1}
    assert results["global"].borrowed_tokens == 0
    assert any("b7@example.com bounced" in line for line in lines)
    # Progress is printed as it arrives: each send reports twice before its result.
    assert sum("personalising" in line for line in lines) == 20
    assert trio.current_time() < 3


def test_demo_cli(capsys: object) -> None:
    assert fanout.cli(["--seed", "3"]) == 0
