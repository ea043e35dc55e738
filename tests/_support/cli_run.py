"""Run the ``entra-passthrough`` command line in this process: ``cli.main(argv)`` with the
process environment, stdin, stdout and stderr it would have had as ``python -m
entra_passthrough``, everything restored when it returns.

A fresh interpreter costs ~0.35 s of CPU (mostly ``import entra_passthrough``); the tests that
check the *content* of a command's answer for many inputs run it here, and keep a real process
for what only a process shows (exit status of the process, pipes, signals, encodings, a fresh
import).

What a real process would also have written to stderr is captured too: a WARNING the library
logs with no handler configured goes to stderr there (``logging.lastResort``), so it is written
to the captured stderr here (pytest's own handlers would otherwise swallow it). Warnings are
not redirected: the suite turns them into errors, which is stricter than a line on stderr.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import pytest

from entra_passthrough import _env
from entra_passthrough.cli import main


@dataclass(frozen=True)
class Ran:
    """What ``subprocess.run(..., capture_output=True, text=True)`` would have returned."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(argv: Sequence[str], *, env: Mapping[str, str] | None = None, stdin: str = "") -> Ran:
    """``entra-passthrough *argv`` in process, as ``sys.exit(main())`` ends the real one (a
    ``SystemExit`` out of ``main`` is its status). ``env`` is the whole process environment for
    the run (as ``subprocess.run(env=...)``); None keeps this process's."""
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, logged_as_stderr() as err:
        if env is not None:
            for name in list(os.environ):
                if name not in env:
                    mp.delenv(name)
            for name, value in env.items():
                mp.setenv(name, value)
        # from_env() warns once per process about an unknown variable: a run here must not
        # use up the warning of a later test's.
        mp.setattr(_env, "_warned", set(_env._warned))
        mp.setattr("sys.stdin", io.StringIO(stdin))
        mp.setattr("sys.stdout", out)
        mp.setattr("sys.stderr", err)
        try:
            code = main(list(argv))
        except SystemExit as exc:  # a command's own parser (--help, a usage error)
            code = _exit_status(exc, err)
    return Ran(code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def logged_as_stderr() -> Iterator[io.StringIO]:
    """What a process that configured no logging would write to stderr while the block runs
    (``logging.lastResort``: WARNING and above, the message alone)."""
    stderr = io.StringIO()
    last_resort = logging.StreamHandler(stderr)
    last_resort.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(last_resort)
    try:
        yield stderr
    finally:
        root.removeHandler(last_resort)


def _exit_status(exc: SystemExit, stderr: io.StringIO) -> int:
    """The status the interpreter exits with on ``exc`` (and what it prints for a message)."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    stderr.write(f"{exc.code}\n")
    return 1
