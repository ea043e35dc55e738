"""MkDocs hooks (mkdocs.yml ``hooks:``).

* Publish the benchmark charts with the site: they are generated into ``bench/results/`` by
  ``make bench`` (and tracked by git); the performance page links them there
  (``../bench/results/overhead.png``, which a reader of the repository sees), and the site
  shows its copy from ``assets/bench/``, without a copy in ``docs/``.
* An include a page hides from the repository's renderer, ``<!-- --8<-- "path" -->`` on its own
  line, is made a ``pymdownx.snippets`` include for the site (a bare ``--8<--`` line would show
  as text on the repository's host); the page links the file for the repository's reader.
* Links from a page to a file of the repository outside ``docs/`` (``../examples/...``,
  ``../README.md``) work in the repository but not on the published site: they are rewritten
  to the file on the repository's host (the ``Source`` project URL in ``pyproject.toml``).
"""

from __future__ import annotations

import posixpath
import re
import tomllib
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent
BENCH_RESULTS = ROOT / "bench" / "results"
CHARTS = ("token_posts.png", "overhead.png", "loop_lag.png")
#: A Markdown link or image target that is relative and climbs out of its page's directory.
_OUTWARD = re.compile(r"(\]\()(\.\./[^)\s#]*)(#[^)\s]*)?(\))")
#: A snippets include in an HTML comment, alone on its line: hidden in the repository.
_HIDDEN_INCLUDE = re.compile(r'^([ \t]*)<!-- (--8<-- "[^"\n]+") -->[ \t]*$', re.MULTILINE)


def _source_url() -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return str(project["urls"]["Source"]).rstrip("/")


def outside_docs_link(page_path: str, target: str, docs_dir: str = "docs") -> str | None:
    """The repository-relative path of ``target`` (a link on the page ``page_path``, relative
    to ``docs_dir``) when it leaves ``docs_dir``, else ``None``."""
    joined = posixpath.normpath(posixpath.join(docs_dir, posixpath.dirname(page_path), target))
    if joined == docs_dir or joined.startswith((f"{docs_dir}/", "../")) or joined == "..":
        return None
    return joined


def chart_on_site(page_path: str, path: str) -> str | None:
    """Where the site serves the chart at ``path`` (repository-relative, ``bench/results/``),
    relative to the page ``page_path``; ``None`` when it is not one of the published charts."""
    folder, name = posixpath.split(path)
    if folder != "bench/results" or name not in CHARTS:
        return None
    return posixpath.relpath(f"assets/bench/{name}", posixpath.dirname(page_path) or ".")


def reveal_includes(markdown: str) -> str:
    """``<!-- --8<-- "path" -->`` lines made ``--8<-- "path"`` includes, for the site."""
    return _HIDDEN_INCLUDE.sub(r"\1\2", markdown)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    source = _source_url()

    def rewrite(match: re.Match[str]) -> str:
        path = outside_docs_link(page.file.src_uri, match.group(2))
        if path is None:
            return match.group(0)
        chart = chart_on_site(page.file.src_uri, path)
        if chart is not None:
            return f"{match.group(1)}{chart}{match.group(4)}"
        kind = "tree" if (ROOT / path).is_dir() else "blob"
        anchor = match.group(3) or ""
        return f"{match.group(1)}{source}/{kind}/main/{path}{anchor}{match.group(4)}"

    return _OUTWARD.sub(rewrite, reveal_includes(markdown))


def on_files(files: Files, config: Any) -> Files:
    for name in CHARTS:
        source = BENCH_RESULTS / name
        if source.exists():
            files.append(File.generated(config, f"assets/bench/{name}", abs_src_path=str(source)))
    return files
