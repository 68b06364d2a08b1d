"""Sphinx configuration for the sluiceway documentation.

Build with ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (``nox -s docs``). Only
extensions shipped with Sphinx are used, and nothing is fetched over the network.
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.transforms.post_transforms import SphinxPostTransform
from sphinx.util import logging

import sluiceway

project = "sluiceway"
author = "The sluiceway developers"
copyright = "The sluiceway developers"
release = sluiceway.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

root_doc = "index"
exclude_patterns = ["_build"]
nitpicky = False
pygments_style = "sphinx"

# -- autodoc and napoleon -------------------------------------------------------------------------

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autoclass_content = "class"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# -- HTML -----------------------------------------------------------------------------------------

html_theme = "alabaster"
html_title = f"sluiceway {release}"
html_theme_options = {
    "description": "Fan out concurrent work on trio under hierarchical capacity limits.",
    "fixed_sidebar": True,
    "show_powered_by": False,
}

# -- the public API must be documented, each name once --------------------------------------------

_logger = logging.getLogger(__name__)


def _check_public_api(app: Sphinx, env: Any) -> None:
    """Warn (an error under ``-W``) for every name of ``sluiceway.__all__`` left undocumented."""
    objects = env.get_domain("py").objects
    for name in sluiceway.__all__:
        if f"sluiceway.{name}" not in objects:
            _logger.warning(
                "sluiceway.%s is in sluiceway.__all__ but not documented in api.rst", name
            )


def _no_inline_attribute_types(app: Sphinx, what: str, *event: Any) -> None:
    """Keep napoleon from reading ``Words: more words`` in an attribute's docstring as a type.

    napoleon takes the text before the first colon of an attribute, data or property docstring
    to be its type (``FIFO``'s "First in, first out: take the oldest item." would render with
    the type "First in, first out"). sluiceway's types come from annotations, never from that
    convention, so this handler (which runs before napoleon) puts an empty reST comment first:
    napoleon then finds no colon on the first line and parses the real text as plain prose.
    """
    lines: list[str] = event[-1]  # the event passes (name, obj, options, lines) after ``what``
    if what in ("attribute", "data", "property") and any(line.strip() for line in lines):
        lines[:0] = ["..", ""]


#: Classes that users receive from other objects and never construct: their constructors take
#: private arguments, so no constructor signature is shown.
_NOT_CONSTRUCTED_BY_USERS = frozenset(
    {
        "sluiceway.ChildCall",
        "sluiceway.Emitter",
        "sluiceway.EnvelopeChannel",
        "sluiceway.PushPullSink",
        "sluiceway.PushPullSource",
        "sluiceway.RunContext",
        "sluiceway.Runtime",
        "sluiceway.TaskFunction",
    }
)


def _hide_private_constructors(
    app: Sphinx, what: str, name: str, *event: Any
) -> tuple[str, None] | None:
    # ``event`` is (obj, options, signature, return_annotation).
    if what == "class" and name in _NOT_CONSTRUCTED_BY_USERS:
        return "", None
    return None


class _BuiltinTypeIsNotAnAttribute(SphinxPostTransform):
    """Leave the builtin ``type`` of a signature (``entity_type: type[RunnableEntity]``) unlinked.

    Sphinx looks an annotation's names up in "fuzzy" mode, where ``type`` also matches every
    documented attribute called ``type`` (``EntityRecord.type``, ``EdgeRecord.type``...), and
    warns that the reference is ambiguous. The builtin has no page here to link to, so these
    references become plain text before they are resolved.
    """

    default_priority = 5  # before the ReferencesResolver (10)

    def run(self, **kwargs: Any) -> None:
        for node in list(self.document.findall(pending_xref)):
            if node.get("refdomain") == "py" and node.get("reftarget") == "type":
                node.replace_self(node.children or [nodes.Text("type")])


def setup(app: Sphinx) -> None:
    app.add_post_transform(_BuiltinTypeIsNotAnAttribute)
    app.connect("autodoc-process-signature", _hide_private_constructors)
    app.connect("autodoc-process-docstring", _no_inline_attribute_types, priority=400)
    app.connect("env-check-consistency", _check_public_api)
