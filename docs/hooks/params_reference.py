"""MkDocs hook: the parameter reference rendered into `params.md` at build time, from the config
dataclasses and `resnetlab.core.reference` (nothing retyped, so it cannot fall behind the code).
The page asks for it with the marker `<!-- params-reference -->` on a line of its own; a build
whose page lacks the marker fails under --strict."""

from __future__ import annotations

from typing import Any

from mkdocs.exceptions import PluginError

MARKER = "<!-- params-reference -->"
PAGE = "params.md"


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    if MARKER not in markdown.splitlines():
        raise PluginError(f"{PAGE}: no line `{MARKER}` for the parameter reference")
    from resnetlab.core.reference import markdown as reference

    return markdown.replace(MARKER, reference())
