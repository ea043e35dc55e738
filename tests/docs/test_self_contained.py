"""The repository stands on its own: it cites no file it does not contain."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ["src", "docs", "examples", "tests", "bench", "pyproject.toml", "README.md", "Makefile"]
SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".json", ".txt", ""}
# Built by concatenation so that this file does not match itself.
FOREIGN = ["FACTS" + ".md", "DESIGN" + ".md"]


def _files() -> list[Path]:
    found: list[Path] = []
    for name in SCANNED:
        path = ROOT / name
        if path.is_file():
            found.append(path)
            continue
        found += [
            p
            for p in path.rglob("*")
            if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts
        ]
    return found


def test_no_file_cites_documents_outside_the_repository() -> None:
    hits = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in _files()
        for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        if any(name in line for name in FOREIGN)
    ]
    assert hits == []
