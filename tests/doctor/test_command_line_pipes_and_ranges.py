"""The ``entra-passthrough`` command line, run for real (``python -m entra_passthrough``): output
into a pipe its reader closed (``... | head -1``) ends quietly with the SIGPIPE status, and
``demo --calls`` out of its range is a usage error, not silently clamped.

(``doctor`` and ``inspect`` share the closed-pipe handling in ``cli.main``; the demo's argument
is parsed there too, before the demo's extra is imported.) The pipes and the closed standard
streams are a real process's; the range of ``--calls`` is checked in this process
(``cli.main``), with one value refused by the real process too.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from _support.cli_run import Ran, run_cli
from _support.tokens import unsigned_jwt
from entra_passthrough.cli import EXIT_BROKEN_PIPE


def _clean_env(**variables: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ENTRA_", "AZURE_", "IDENTITY_", "MSI_", "PYTHONUNBUFFERED"))
    }
    env.update(variables)
    return env


def _into_closed_pipe(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run the command with stdout a pipe whose reading end is already closed (what ``head``
    leaves once it has its line): exit status and stderr."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "entra_passthrough", *argv],
            stdout=write,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        os.close(write)
    return done.returncode, done.stderr


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("command", ["inspect", "inspect --json", "doctor", "doctor --json"])
def test_output_into_a_closed_pipe_ends_quietly(command: str, buffered: bool) -> None:
    """With stdout unbuffered (PYTHONUNBUFFERED, a container's usual setting) the first write
    fails; buffered, the flush at exit does. Either way: no traceback, no "Exception ignored",
    and 141 (128 + SIGPIPE), as a shell reports for any program that a closed pipe ends."""
    argv = command.split()
    if argv[0] == "inspect":
        argv.insert(1, unsigned_jwt(aud="api://agent", oid="o1", tid="t1", upn="a@contoso.com"))
    env = _clean_env(**({} if buffered else {"PYTHONUNBUFFERED": "1"}))
    code, stderr = _into_closed_pipe(argv, env)
    assert stderr == ""
    assert code == EXIT_BROKEN_PIPE == 141


#: The value of ``--calls`` the real process is asked with (the others run in this process).
_CALLS_IN_A_PROCESS = "1000"


@pytest.mark.parametrize("calls", ["-5", "0", "51", "1000"])
def test_demo_calls_out_of_range_is_refused(calls: str) -> None:
    argv = ["demo", f"--calls={calls}"]
    done: subprocess.CompletedProcess[str] | Ran
    if calls == _CALLS_IN_A_PROCESS:
        done = subprocess.run(
            [sys.executable, "-m", "entra_passthrough", *argv],
            env=_clean_env(),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    else:
        done = run_cli(argv, env=_clean_env())
    assert done.returncode == 2
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"entra-passthrough demo: error: argument --calls: must be 1-50, got {calls}"
    )


def test_demo_help_states_the_range_of_calls() -> None:
    done = run_cli(["demo", "--help"], env=_clean_env())
    assert done.returncode == 0
    assert "requests per user, 1-50 (default 3)" in " ".join(done.stdout.split())


def test_a_closed_stdout_is_not_a_traceback() -> None:
    """``entra-passthrough inspect T >&-``: Python starts with ``sys.stdout`` None."""

    done = subprocess.run(
        [sys.executable, "-m", "entra_passthrough", "inspect", "not-a-token"],
        capture_output=False,
        stderr=subprocess.PIPE,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.close(1),
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode in (0, 2), done.stderr


@pytest.mark.parametrize(
    ("closed", "argv"),
    [
        (0, ["inspect", "-"]),  # stdin closed: read as empty, refused in one line
        # stderr closed: the refusal has nowhere to go, and still exits 2, not 1 (an
        # AttributeError on sys.stderr, which Python sets to None)
        (2, ["broker", "--config", "/nonexistent/broker.json"]),
        (2, ["emulator", "--port", "99999"]),
    ],
)
def test_a_closed_stdin_or_stderr_is_not_a_traceback(closed: int, argv: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "entra_passthrough", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.close(closed),
        check=False,
    )
    assert "Traceback" not in done.stdout + done.stderr
    assert done.returncode == 2
