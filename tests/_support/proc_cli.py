"""``entra-passthrough ...`` in this process: the command's answer (exit status, stdout, stderr)
for the tests that check what it says for many inputs, where a process each would start the
interpreter and import the library again (~0.4 s of CPU a run). A test keeps one real process
(``python -m entra_passthrough ...``) per behaviour only a process has: the status the
interpreter exits with, a traceback it prints, what it writes at exit.

The environment is set with ``monkeypatch`` (undone after the test); stdout and stderr, and their
file descriptors, are read with ``capfd``; what the command logs at WARNING or above is added to
stderr, where Python's last-resort handler would print it in a process of its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import NamedTuple

import pytest


class Answer(NamedTuple):
    """What a command run answered, as ``subprocess.CompletedProcess`` has it."""

    returncode: int
    stdout: str
    stderr: str


def run_cli(
    argv: Sequence[str],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    *,
    drop: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
) -> Answer:
    """``entra-passthrough *argv`` through the CLI's ``main``: the variables starting with one of
    ``drop`` removed from the environment, ``env`` set."""
    from entra_passthrough.cli import main

    for name in list(os.environ):
        if drop and name.startswith(drop):
            monkeypatch.delenv(name)
    for name, value in (env or {}).items():
        monkeypatch.setenv(name, value)
    capfd.readouterr()  # what came before is not the command's
    message = ""
    with _warnings_logged() as logged:
        try:
            code = main(list(argv))
        except SystemExit as exc:  # what the interpreter makes of it (argparse's --help: 0)
            code, message = _exit_status(exc.code)
    out, err = capfd.readouterr()
    return Answer(code, out, err + "".join(f"{line}\n" for line in logged) + message)


def _exit_status(code: object) -> tuple[int, str]:
    """The exit status (and stderr) of a process ended by ``SystemExit(code)``."""
    if code is None:
        return 0, ""
    if isinstance(code, int):
        return code, ""
    return 1, f"{code}\n"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def _warnings_logged() -> Iterator[list[str]]:
    """The messages logged at WARNING or above (through the root logger) while it is entered."""
    handler = _Records()
    logging.getLogger().addHandler(handler)
    try:
        yield handler.lines
    finally:
        logging.getLogger().removeHandler(handler)
