"""docs/errors.md's AADSTS table is generated from _aadsts.py; this test keeps them equal.

Regenerate with: ``.venv/bin/python tests/resolve/test_docs.py --write``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from entra_passthrough._aadsts import _TABLE

DOC = Path(__file__).parents[2] / "docs" / "errors.md"
START = "<!-- aadsts-table:start (generated from src/entra_passthrough/_aadsts.py) -->"
END = "<!-- aadsts-table:end -->"


def render_table() -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    rows = ["| Code | Name | What it means | Fix |", "|---|---|---|---|"]
    for entry in sorted(_TABLE, key=lambda e: e.code):
        rows.append(
            # The anchor is what error messages link to (errors/#aadsts<code>).
            f'| <a id="aadsts{entry.code}"></a>AADSTS{entry.code} | {entry.name} '
            f"| {cell(entry.meaning)} | {cell(entry.fix)} |"
        )
    return "\n".join(rows)


def current_table(text: str) -> str:
    start = text.index(START) + len(START)
    return text[start : text.index(END)].strip()


def test_errors_doc_table_matches_aadsts_module() -> None:
    text = DOC.read_text()
    assert current_table(text) == render_table(), (
        "docs/errors.md is out of date: run .venv/bin/python tests/resolve/test_docs.py --write"
    )


def _write() -> None:
    text = DOC.read_text()
    start = text.index(START) + len(START)
    end = text.index(END)
    DOC.write_text(text[:start] + "\n" + render_table() + "\n" + text[end:])


if __name__ == "__main__" and "--write" in sys.argv:
    _write()
