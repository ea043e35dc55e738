"""``entra-passthrough demo``: the whole library on loopback, with no tenant and no network.

A local Entra (the emulator), an MCP server protected by ``entra_passthrough.server``, two
hosted agents (Agent Framework ``ResponsesHostServer`` with a scripted chat client) whose MCP
tool comes from ``entra_passthrough.agent_framework``, and a consent broker served over HTTPS
with a certificate from the emulator's CA. Users then send Responses requests, concurrently, and
the demo checks what the MCP server saw. Exit status 0 only if every check passed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile

from ..cli import parser_for

try:
    from . import _scenes
except ImportError as _exc:
    from .._errors import require_extra

    raise require_extra("_demo", "demo", _exc) from _exc


def main(argv: list[str]) -> int:
    args = parser_for("demo").parse_args(argv)  # defined with the core only (--help works)
    # The demo prints its own table; the hosts' INFO chatter goes nowhere (warnings still show).
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="entra-demo-") as state:
        # ResponsesHostServer keeps its state under AGENTSERVER_STATE_ROOT (a temporary folder).
        os.environ.setdefault("AGENTSERVER_STATE_ROOT", state)
        ok = asyncio.run(_scenes.run(calls=args.calls))  # 1-50: checked by the parser
    return 0 if ok else 1
