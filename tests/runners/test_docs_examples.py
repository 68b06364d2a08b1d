"""Examples of the runners guide (docs/guides/runners.rst) run exactly as printed.

An example is tested when an rst comment naming this file precedes its ``code-block:: python``;
the ``code-block:: text`` after it (introduced by "It prints:") is its expected output.
"""

from __future__ import annotations

import contextlib
import io
import re
import textwrap
from pathlib import Path

import pytest

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guides" / "runners.rst"
MARKER = "tests/runners/test_docs_examples.py"


def blocks_after(text: str, start: int) -> tuple[str, str]:
    """The first python code block after ``start`` and the text block that follows it."""

    def block(kind: str, offset: int) -> tuple[str, int]:
        match = re.compile(rf"^\.\. code-block:: {kind}\n\n((?:   .*\n|\n)+)", re.M).search(
            text, offset
        )
        assert match is not None, f"no {kind} block after offset {offset}"
        return textwrap.dedent(match.group(1)).strip("\n") + "\n", match.end()

    code, end = block("python", start)
    output, _ = block("text", end)
    return code, output


def examples() -> list[tuple[str, str]]:
    text = GUIDE.read_text(encoding="utf-8")
    found = [blocks_after(text, match.end()) for match in re.finditer(re.escape(MARKER), text)]
    assert found, f"no example in {GUIDE} is marked for {MARKER}"
    return found


@pytest.mark.parametrize(("code", "expected"), examples())
def test_a_guide_example_prints_what_the_guide_says(code: str, expected: str) -> None:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(GUIDE), "exec"), {"__name__": "__docs_example__"})
    assert printed.getvalue() == expected
