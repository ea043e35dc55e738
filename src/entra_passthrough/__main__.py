"""``python -m entra_passthrough``: the ``entra-passthrough`` command, where the script is not on
``PATH`` (a container's ``pip install --user``, a venv that is not activated)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
