"""Where the documentation lives, for messages read by people who installed a wheel.

The site's address is written once, as the ``Documentation`` project URL in ``pyproject.toml``;
this module reads it from the installed package's metadata. Running from a source tree without
installed metadata, a reference falls back to the page's path in the repository
(``docs/<page>.md``), which is what a person with a checkout can open.
"""

from __future__ import annotations

from functools import cache
from importlib import metadata

DIST = "entra-passthrough"


@cache
def _site() -> str | None:
    try:
        entries = metadata.metadata(DIST).get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        return None
    for entry in map(str, entries):
        label, _, url = entry.partition(",")
        if label.strip().lower() == "documentation" and url.strip().startswith("https://"):
            return url.strip().rstrip("/") + "/"
    return None


def doc_url(page: str, anchor: str = "") -> str:
    """The address of a documentation page (``page`` is the file name without ``.md``)."""
    fragment = f"#{anchor}" if anchor else ""
    site = _site()
    if site is None:
        return f"docs/{page}.md{fragment}"
    return f"{site}{page}/{fragment}"


def see(page: str, anchor: str = "") -> str:
    """``see <address>``, for the end of an error message or a fix."""
    return f"see {doc_url(page, anchor)}"
