"""The ``entra-passthrough`` command line.

Each subcommand lives next to the feature it runs and is imported only when used, so that
``entra-passthrough inspect`` does not import the emulator, and a missing extra names itself.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

# name -> (module, function, help). The function takes the remaining argv and returns an exit code.
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("entra_passthrough._demo", "main", "run the end-to-end demo on loopback"),
    "emulator": (
        "entra_passthrough.testing._cli",
        "main",
        "run the local Entra emulator and print its world",
    ),
    "broker": ("entra_passthrough.consent._cli", "main", "run the consent broker"),
    "inspect": (
        "entra_passthrough._inspect",
        "main",
        "decode a token (unverified) and say which sources could use it",
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="entra-passthrough",
        description="Per-user Entra identity from agents to MCP servers and APIs.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, _, help_text) in _COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not args or args[0] in ("-h", "--help") or args[0] not in _COMMANDS:
        parser.print_help()
        return 0 if not args or args[0] in ("-h", "--help") else 2
    module_name, func_name, _ = _COMMANDS[args[0]]
    module = importlib.import_module(module_name)
    func: Callable[[list[str]], int] = getattr(module, func_name)
    return func(args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
