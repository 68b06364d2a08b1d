"""Personalization: the pluggable step that turns a template and a contact into an email."""

from __future__ import annotations

import html
import re
from typing import Any, Protocol, runtime_checkable

import attrs

#: ``{{ field }}`` placeholders of subjects and bodies.
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")

#: The contact fields a template may use.
FIELDS = ("first_name", "last_name", "full_name", "email", "company")


@attrs.frozen(kw_only=True)
class PersonalizationRequest:
    """What a personalizer gets: the template's subject and HTML body, and the contact."""

    subject_template: str
    body_html_template: str
    contact: dict[str, Any]

    @property
    def values(self) -> dict[str, str]:
        """The contact's fields as a template sees them (missing ones empty)."""
        first = str(self.contact.get("first_name") or "")
        last = str(self.contact.get("last_name") or "")
        return {
            "first_name": first,
            "last_name": last,
            "full_name": f"{first} {last}".strip(),
            "email": str(self.contact.get("email") or ""),
            "company": str(self.contact.get("company") or ""),
        }


@attrs.frozen(kw_only=True)
class Personalization:
    """A personalized email: its subject, HTML body and notes on how it was made."""

    subject: str
    body_html: str
    notes: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """As JSON (an email draft's result)."""
        return {"subject": self.subject, "body_html": self.body_html, "notes": self.notes}


@runtime_checkable
class Personalizer(Protocol):
    """Makes one email for one contact. The default, :class:`TemplatePersonalizer`, fills the
    template's placeholders; another (a language model behind an HTTP API, say) is passed to
    :func:`~sluiceway.apps.campaigns.create_app`. A personalizer runs inside an email draft's
    run: if it raises, the draft fails and so does its recipient; a re-run personalizes again,
    so it should be deterministic or cheap to repeat."""

    async def personalize(self, request: PersonalizationRequest) -> Personalization: ...


def unknown_placeholders(text: str) -> list[str]:
    """The placeholders of ``text`` that name no contact field."""
    return sorted({name for name in PLACEHOLDER.findall(text) if name not in FIELDS})


def _where(text: str, position: int) -> str:
    line = text.count("\n", 0, position) + 1
    column = position - (text.rfind("\n", 0, position) + 1) + 1
    return f"line {line}, column {column}"


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def malformed_placeholders(field: str, text: str) -> list[str]:
    """What is wrong with the placeholders of one part of a template (``field`` is its name,
    which starts each line), or ``[]``: a ``{{`` never closed by ``}}``, a ``}}`` that closes
    no ``{{``, an empty ``{{ }}``, braces inside a placeholder (nesting, ``{{{ x }}}``), and a
    placeholder that is not ``{{ name }}`` (``{{ first name }}``, ``{{ x | upper }}``). Each
    says where, by line and column (from 1). Single braces outside placeholders (CSS) are
    text. A placeholder naming no contact field is :func:`unknown_placeholders`' concern."""
    problems = []
    at = 0
    while True:
        opening = text.find("{{", at)
        closing = text.find("}}", at)
        if closing >= 0 and (opening < 0 or closing < opening):
            problems.append(f"{field}: '}}}}' at {_where(text, closing)} closes no '{{{{'")
            at = closing + 2
            continue
        if opening < 0:
            return problems
        end = text.find("}}", opening + 2)
        if end < 0:
            problems.append(f"{field}: '{{{{' at {_where(text, opening)} is never closed by '}}}}'")
            return problems
        inner = text[opening + 2 : end]
        placeholder = text[opening : end + 2]
        at = end + 2
        if "{{" in inner:
            problems.append(
                f"{field}: a placeholder inside the placeholder at {_where(text, opening)}: "
                "placeholders do not nest"
            )
            outer = text.find("}}", at)  # the outer placeholder's end, if it has one
            at = at if outer < 0 else outer + 2
        elif "{" in inner or "}" in inner:
            problems.append(
                f"{field}: a brace inside the placeholder {_shown(placeholder)} at "
                f"{_where(text, opening)}: a placeholder is '{{{{ name }}}}'"
            )
        elif not inner.strip():
            problems.append(f"{field}: empty placeholder at {_where(text, opening)}")
        elif PLACEHOLDER.fullmatch(placeholder) is None:
            problems.append(
                f"{field}: malformed placeholder {_shown(placeholder)} at "
                f"{_where(text, opening)}: a placeholder is '{{{{ name }}}}', one of {list(FIELDS)}"
            )


def fill(text: str, values: dict[str, str], *, escape: bool) -> str:
    """``text`` with each ``{{ field }}`` replaced by its value (HTML-escaped if ``escape``)."""

    def replace(match: re.Match[str]) -> str:
        value = values.get(match.group(1), "")
        return html.escape(value) if escape else value

    return PLACEHOLDER.sub(replace, text)


class TemplatePersonalizer:
    """The default personalizer: fills ``{{ first_name }}``, ``{{ last_name }}``,
    ``{{ full_name }}``, ``{{ email }}`` and ``{{ company }}`` from the contact (HTML-escaped
    in the body). It needs no network and always gives the same email for the same input."""

    async def personalize(self, request: PersonalizationRequest) -> Personalization:
        values = request.values
        return Personalization(
            subject=fill(request.subject_template, values, escape=False),
            body_html=fill(request.body_html_template, values, escape=True),
            notes="filled from the template",
        )
