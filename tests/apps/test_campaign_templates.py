"""``templates/create`` refuses unbalanced and malformed placeholders with ``invalid_template``
and a message saying where, over the real stack (WebSocket server and client on 127.0.0.1,
SQLite runtime); well-formed templates, braces of CSS included, are still accepted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sluiceway.client import ServerError

from .campaign_stack import campaign_stack

GOOD = {"name": "t", "subject_template": "Hi {{ first_name }}", "body_html": "<p>Hello</p>"}

#: (case, field, template text, what the message must say)
MALFORMED = [
    ("unclosed", "subject_template", "Hi {{ first_name", "'{{' at line 1, column 4"),
    ("unclosed at the end", "subject_template", "Hi {{", "is never closed"),
    ("half closed", "body_html", "<p>{{ company }</p>", "'{{' at line 1, column 4"),
    ("unopened", "subject_template", "Hi first_name }}", "'}}' at line 1, column 15"),
    ("unopened after a good one", "body_html", "{{ email }} and }}", "column 17"),
    ("empty", "body_html", "<p>{{ }}</p>", "empty placeholder"),
    ("empty without spaces", "subject_template", "{{}}", "empty placeholder"),
    ("nested", "body_html", "{{ {{ first_name }} }}", "do not nest"),
    ("triple braces", "subject_template", "{{{ first_name }}}", "brace"),
    ("two words", "subject_template", "Hi {{ first name }}", "'{{ first name }}'"),
    ("a filter", "body_html", "{{ first_name | upper }}", "'{{ first_name | upper }}'"),
    ("on a later line", "body_html", "<p>\n  Dear {{ company\n</p>", "line 2, column 8"),
]


async def create_error(stack: Any, body: dict[str, Any]) -> ServerError:
    with pytest.raises(ServerError) as caught:
        await stack.client.call("templates/create", body)
    assert caught.value.code == "endpoint_error"
    assert caught.value.details["code"] == "invalid_template"
    return caught.value


async def test_malformed_placeholders_are_refused_with_where(tmp_path: Path) -> None:
    async with campaign_stack(tmp_path) as stack:
        for case, field, text, where in MALFORMED:
            error = await create_error(stack, {**GOOD, "name": case, field: text})
            assert error.message.startswith(f"{field}: "), (case, error.message)
            assert where in error.message, (case, error.message)
            problems = error.details["details"]
            assert isinstance(problems, list)
            assert all(p.startswith(f"{field}: ") for p in problems), (case, problems)
            # Nothing was created.
            assert await stack.runtime.store.find_entity(None, f"template:{case}") is None


async def test_every_problem_of_both_parts_is_reported(tmp_path: Path) -> None:
    async with campaign_stack(tmp_path) as stack:
        error = await create_error(
            stack,
            {**GOOD, "subject_template": "Hi {{ first_name", "body_html": "}} {{ }} {{ shoe }}"},
        )
        problems = error.details["details"]
        assert [p.split(":", 1)[0] for p in problems] == [
            "subject_template",
            "body_html",
            "body_html",
            "unknown placeholders ['shoe']; the fields are ['first_name', 'last_name', "
            "'full_name', 'email', 'company']",
        ]


async def test_a_placeholder_cannot_span_the_subject_and_the_body(tmp_path: Path) -> None:
    """Each part is checked alone (they used to be checked joined, subject then body)."""
    async with campaign_stack(tmp_path) as stack:
        error = await create_error(
            stack, {**GOOD, "subject_template": "Hi {{", "body_html": "first_name }}"}
        )
        assert "subject_template: '{{' at line 1, column 4" in error.message
        assert "body_html: '}}' at line 1, column 12" in error.message


@pytest.mark.parametrize(
    ("subject", "body"),
    [
        ("Hi {{first_name}}", "<p>{{  full_name  }}</p>"),
        ("{{ email }}{{ company }}", "<p>{{\nlast_name\n}}</p>"),
        ("Hello", "<style>p { color: red } a { b: c }</style><p>{ single } braces</p>"),
        ("Hi", "<p>no placeholders at all</p>"),
    ],
)
async def test_well_formed_templates_are_accepted(tmp_path: Path, subject: str, body: str) -> None:
    async with campaign_stack(tmp_path) as stack:
        made = await stack.client.call(
            "templates/create", {**GOOD, "subject_template": subject, "body_html": body}
        )
        assert made["status"] == "draft"
