"""MkDocs hooks (mkdocs.yml ``hooks:``): publish the benchmark charts with the site.

The charts are generated into ``bench/results/`` by ``make bench``; the performance page shows
them from ``assets/bench/`` without a copy in ``docs/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

BENCH_RESULTS = Path(__file__).resolve().parent / "bench" / "results"
CHARTS = ("token_posts.png", "overhead.png", "loop_lag.png")


def on_files(files: Files, config: Any) -> Files:
    for name in CHARTS:
        source = BENCH_RESULTS / name
        if source.exists():
            files.append(File.generated(config, f"assets/bench/{name}", abs_src_path=str(source)))
    return files
