"""The ``entra-passthrough`` command line.

Each subcommand lives next to the feature it runs and is imported only when used, so that
``entra-passthrough inspect`` does not import the emulator. The argument parsers of the commands
that need an extra are defined here, with the core only, so ``--help`` and usage errors work on a
core install; a missing extra is one line on stderr naming the extra to install (exit 2), never a
traceback. Output into a pipe whose reader has gone (``entra-passthrough inspect T | head -1``)
ends the command quietly with status 141, as SIGPIPE would end another program; Ctrl-C ends it
with one line on stderr and status 130, as SIGINT would. With no command it prints the help on
stderr and exits 2 (a usage error; ``--help`` prints it on stdout and exits 0).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

from ._errors import MissingExtraError, install_extra_hint


class _Command(NamedTuple):
    module: str
    function: str  # takes the remaining argv, returns an exit code
    help: str
    extra: str | None  # the extra the module needs (None: the core is enough)


_COMMANDS: dict[str, _Command] = {
    "demo": _Command(
        "entra_passthrough._demo", "main", "run the end-to-end demo on loopback", "demo"
    ),
    "emulator": _Command(
        "entra_passthrough.testing._cli",
        "main",
        "run the local Entra emulator and print its world",
        "testing",
    ),
    "broker": _Command(
        "entra_passthrough.consent._cli", "main", "run the consent broker", "consent"
    ),
    "inspect": _Command(
        "entra_passthrough._inspect",
        "main",
        "decode a token (unverified) and say which sources could use it",
        None,
    ),
    "doctor": _Command(
        "entra_passthrough._doctor",
        "main",
        "check the configuration from_env() reads against Entra, with a fix per failure",
        None,
    ),
}


def _demo_args(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "The whole library on loopback, with no tenant and no network: a local Entra (the "
        "emulator), an MCP server, two hosted agents and a consent broker; users send requests "
        "concurrently and the demo checks what the MCP server saw. Exit 0 only if every check "
        "passed."
    )
    parser.add_argument(
        "--calls",
        type=_calls,
        default=3,
        metavar="N",
        help=f"requests per user, {_CALLS[0]}-{_CALLS[1]} (default 3)",
    )


#: The range of ``demo --calls`` (more would only make the demo slower, not prove more).
_CALLS = (1, 50)


def _calls(text: str) -> int:
    """``--calls``: a whole number in range (argparse turns the error into usage and exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text[:20]!r}") from None
    if not _CALLS[0] <= value <= _CALLS[1]:
        raise argparse.ArgumentTypeError(f"must be {_CALLS[0]}-{_CALLS[1]}, got {value}")
    return value


def _emulator_args(parser: argparse.ArgumentParser) -> None:
    parser.description = "Run the local Entra ID emulator (HTTPS on 127.0.0.1) until interrupted."
    parser.add_argument("--port", type=int, default=0, help="HTTPS port (default: any free)")
    parser.add_argument("--token-latency", type=float, default=0.0, help="seconds per token")
    parser.add_argument("--config", help="world file (JSON or TOML)")
    parser.add_argument("--state-file", help="write url, CA, ids, secrets as JSON")
    parser.add_argument("--hide-secrets", action="store_true", help="do not print secrets")


def _broker_args(parser: argparse.ArgumentParser) -> None:
    parser.description = "Serve the consent broker over HTTPS."
    parser.add_argument("--config", required=True, help="JSON config file (no secrets)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--certfile", help="TLS certificate PEM (required unless --insecure-http)")
    parser.add_argument("--keyfile", help="TLS private key PEM")
    parser.add_argument(
        "--insecure-http", action="store_true", help="plain HTTP on loopback (development only)"
    )
    parser.add_argument(
        "--forwarded-allow-ips",
        metavar="IPS",
        help="behind a TLS-terminating front end (Container Apps / App Service ingress): its "
        "addresses, comma-separated IPs or networks, or '*' when nothing else can reach the "
        "port; plain HTTP on any interface, and only HTTPS requests through those proxies are "
        "served (default $ENTRA_PASSTHROUGH_CONSENT_FORWARDED_ALLOW_IPS, else the config's "
        "'forwarded_allow_ips')",
    )
    parser.add_argument(
        "--store",
        help="grant store shared with the agents: redis://... or rediss://... (default "
        "$ENTRA_PASSTHROUGH_REDIS_URL, else memory: not shared); keep passwords in the "
        "environment variable, not on the command line",
    )


_ARGUMENTS: dict[str, Callable[[argparse.ArgumentParser], None]] = {
    "demo": _demo_args,
    "emulator": _emulator_args,
    "broker": _broker_args,
}


def parser_for(command: str) -> argparse.ArgumentParser:
    """The argument parser of ``entra-passthrough <command>`` (built with the core only)."""
    parser = argparse.ArgumentParser(prog=f"entra-passthrough {command}")
    _ARGUMENTS[command](parser)
    _version_argument(parser)
    return parser


def _version_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"entra-passthrough {_version()}")


def _asks_version(rest: Sequence[str]) -> bool:
    """``--version`` among a subcommand's options (before a ``--``): every subcommand answers
    it the way the top level does, before anything optional is imported."""
    options = rest[: rest.index("--")] if "--" in rest else rest
    return "--version" in options and "-h" not in options and "--help" not in options


def _version() -> str:
    from . import __version__

    return __version__


def _install_hint(extra: str) -> str:
    return install_extra_hint(extra)


#: The exit status of a command stopped with Ctrl-C (SIGINT), as a shell reports a process that
#: signal ended (128 + 2): one line on stderr, not a ``KeyboardInterrupt`` traceback.
EXIT_INTERRUPTED = 130

#: The exit status of a command whose reader went away (``entra-passthrough inspect T | head -1``):
#: what a shell reports for a process ended by SIGPIPE (128 + 13), distinct from the commands' own
#: 0, 1 (doctor: a check failed) and 2 (bad input).
EXIT_BROKEN_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its output going into a pipe that was closed (``| head``) ends it
    quietly with ``EXIT_BROKEN_PIPE``, not a traceback."""
    # Started with a standard stream closed (``>&-``, ``2>&-``, ``0<&-``): Python sets it to
    # None. Output goes nowhere and input is empty, instead of an AttributeError's traceback.
    if sys.stdout is None:
        sys.stdout = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - for the process
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115 - for the process
    if sys.stdin is None:
        sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - for the process
    _escape_unencodable(sys.stdout)
    try:
        code = _main(argv)
        sys.stdout.flush()  # what is still buffered fails here, not at interpreter exit
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        _say_interrupted(argv)
        return EXIT_INTERRUPTED
    return code


def _escape_unencodable(stream: object) -> None:
    """A character the output's encoding cannot write (a cp1252 console, ``LC_ALL=C`` without
    UTF-8 mode: a name in a path, a user in a world file) is written escaped (``\\u0142``), as
    on stderr, instead of ending the command in a ``UnicodeEncodeError`` traceback."""
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is None:
        return
    with contextlib.suppress(ValueError, OSError, TypeError):  # closed, or not ours to change
        reconfigure(errors="backslashreplace")


def _say_interrupted(argv: Sequence[str] | None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    name = f" {args[0]}" if args and args[0] in _COMMANDS else ""
    try:
        sys.stderr.write(f"\nentra-passthrough{name}: interrupted\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr closed or gone: the status says it
        pass


def _discard_stdout() -> None:
    """Point stdout at the null device: Python flushes it again at exit, and that would print
    "Exception ignored ... BrokenPipeError" (the usual recipe of the signal module's docs)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor (a replaced sys.stdout): nothing to do
        pass


def _main(argv: Sequence[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="entra-passthrough",
        description="Per-user Entra identity from agents to MCP servers and APIs.",
        epilog="Run 'entra-passthrough COMMAND --help' for a command's options.",
    )
    _version_argument(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, command in _COMMANDS.items():
        needs = f" (needs the '{command.extra}' extra)" if command.extra else ""
        sub.add_parser(name, help=command.help + needs, add_help=False)
    if not args or args[0] not in _COMMANDS:
        try:
            parser.parse_args(args)  # --help, --version, or an unknown command (usage, exit 2)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 2
        # No command is a usage error, as argparse makes any other (exit 2); --help exits 0.
        parser.print_help(sys.stderr)
        return 2
    name, rest = args[0], args[1:]
    command = _COMMANDS[name]
    if _asks_version(rest):
        sys.stdout.write(f"entra-passthrough {_version()}\n")
        return 0
    parsed = None
    if name in _ARGUMENTS:
        # --help and usage errors before anything optional is imported.
        try:
            parsed = parser_for(name).parse_args(rest)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 2
    try:
        module = importlib.import_module(command.module)
    except ImportError as exc:
        extra = exc.extra if isinstance(exc, MissingExtraError) else command.extra
        if extra is None:
            raise
        cause = exc.__cause__ if isinstance(exc.__cause__, ImportError) else exc
        missing = f" (missing: {cause.name})" if cause.name else ""
        sys.stderr.write(
            f"entra-passthrough {name}: needs the '{extra}' extra, which is not installed"
            f"{missing}. Fix: {_install_hint(extra)}\n"
        )
        return 2
    func: Callable[[list[str]], int] = getattr(module, command.function)
    try:
        return func(rest)
    except MissingExtraError as exc:
        sys.stderr.write(f"entra-passthrough {name}: {exc}\n")
        return 2
    except RecursionError as exc:
        # A --config file nested thousands deep ("[" * 100000 in JSON or TOML): the parser's
        # RecursionError, a traceback of up to 3000 lines, where every other file it cannot
        # load is one line and status 2.
        config = getattr(parsed, "config", None)
        if not config or not _raised_decoding(exc):
            raise
        sys.stderr.write(
            f"entra-passthrough {name}: cannot load {config}: it is nested too deeply to be "
            "read (RecursionError); a config file is a table of the command's settings "
            f"({_CONFIG_DOCS.get(name, 'docs/')}).\n"
        )
        return 2


#: Where each command's --config file is described.
_CONFIG_DOCS = {"emulator": "docs/emulator.md", "broker": "docs/consent.md"}

#: The modules that parse a config file (json's decoder, whose C scanner recurses too; tomllib).
_DECODERS = ("json.decoder", "json.scanner", "tomllib._parser")


def _raised_decoding(exc: BaseException) -> bool:
    """Whether ``exc`` was raised while a JSON or TOML text was decoded (a frame of the
    decoders is on its traceback), not anywhere else a command may recurse."""
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__") in _DECODERS:
            return True
        tb = tb.tb_next
    return False


if __name__ == "__main__":
    raise SystemExit(main())
