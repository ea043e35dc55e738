"""The README's first ```python block (the overview) runs as copied into a file: in a fresh
interpreter, with only the environment ``from_env()`` reads. The docs check (tests/docs) runs it
after a prelude that defines ``app``, so a block using ``app`` without defining it passed there
and raised NameError for a reader.

(It lives here because the docs check's own files are not changed with it; it belongs with
``tests/docs``.)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _first_python_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"^```python\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)
    assert found is not None
    return found.group(1)


def test_the_readme_overview_runs_as_copied(tmp_path: Path) -> None:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("ENTRA_", "AZURE_", "IDENTITY_"))
    }
    env.update(
        {
            "AZURE_TENANT_ID": "11111111-1111-1111-1111-111111111111",
            "ENTRA_PASSTHROUGH_CLIENT_ID": "44444444-4444-4444-4444-444444444444",
            "ENTRA_PASSTHROUGH_CLIENT_SECRET": "overview-secret-value",
        }
    )
    script = tmp_path / "overview.py"
    script.write_text(_first_python_block(), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
