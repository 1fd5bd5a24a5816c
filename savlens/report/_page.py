"""The report page: the data as one inline JSON blob, the styles and the script inline, no network."""

import html
import itertools
import json
from functools import cache
from importlib import resources
from typing import Any

_COUNTER = itertools.count()


@cache
def _asset(name: str) -> str:
    return resources.files("savlens.report").joinpath(name).read_text(encoding="utf-8")


def json_for_script(data: Any) -> str:
    """Return ``data`` as JSON that is safe inside an HTML ``<script>`` element.

    ``<``, ``>`` and ``&`` are written as ``\\u003c``, ``\\u003e`` and ``\\u0026`` (JSON escapes, so the parsed
    value is unchanged), so no string can close the element or open a comment; non-ASCII is escaped too.

    >>> json_for_script({"label": "</script><b>"})
    '{"label": "\\\\u003c/script\\\\u003e\\\\u003cb\\\\u003e"}'
    """
    text = json.dumps(data, ensure_ascii=True, allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render(data: dict[str, Any], *, full: bool = True) -> str:
    """Return the report page for ``data`` (:func:`savlens.report.report_data`).

    ``full``: a whole HTML document (for a file); else a fragment for a notebook cell, whose element id is unique
    within the process so several reports can share a page.
    """
    root = "savlens-report" if full else f"savlens-report-{next(_COUNTER)}"
    script = _asset("page.js").replace("__SAVLENS_ROOT__", json.dumps(root))
    body = f"""<div class="savlens-report" id="{root}">
<script type="application/json" class="sr-data">{json_for_script(data)}</script>
<style>{_asset("page.css")}</style>
<h1>{html.escape(str(data.get("title", "SAV report")))}</h1>
<p class="sr-summary"></p>
<ul class="sr-notes"></ul>
<noscript>This report needs JavaScript to draw the head map and the examples.</noscript>
<div class="sr-main">
<section class="sr-map"><h2>Head scores: layer x head (click a head)</h2><div class="sr-grid"></div><div class="sr-legend"></div></section>
<section class="sr-detail"><h2 class="sr-head-title">Click a head</h2><div class="sr-head-summary"></div><div class="sr-examples"></div></section>
</div>
<script>{script}</script>
</div>"""  # noqa: E501
    if not full:
        return body
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{html.escape(str(data.get("title", "SAV report")))}</title>
</head>
<body>
{body}
</body>
</html>
"""
