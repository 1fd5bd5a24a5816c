"""Griffe extension for the API pages: Google-style ``Example:`` sections and Sphinx roles.

savlens docstrings head their doctests with ``Example:`` (the Google style guide's singular). Griffe treats only
``Examples:`` as an examples section (doctests rendered as code); any other title becomes an admonition whose
doctest output would be parsed as Markdown. Sphinx roles (``:func:`extract```) are shown as code.
Excluded from the site by mkdocs.yml's ``exclude_docs``.
"""

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_ROLE = re.compile(r":(?:meth|func|class|mod|attr|data|exc|obj):`~?([^`]+)`")


class ExampleSections(griffe.Extension):
    """Rename ``Example:`` section headers to ``Examples:``; turn Sphinx roles into inline code."""

    def on_object(self, *, obj: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            text = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
            obj.docstring.value = _ROLE.sub(r"`\1`", text)
