"""The ``entra-passthrough`` command line, run for real: Ctrl-C (SIGINT) ends a command with one
line on stderr and exit status 130 (128 + SIGINT, what a shell reports), not a
``KeyboardInterrupt`` traceback; no command at all is a usage error (help on stderr, exit 2),
while ``--help`` prints the help on stdout and exits 0.

(``demo`` is interrupted in tests/demo; the handling is ``cli.main``'s, for every command.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def _clean_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ENTRA_", "AZURE_", "IDENTITY_", "MSI_"))
    }


#: Imports everything ``inspect -`` needs, says so, then runs the command as the console script
#: does: the signal is sent once the command is waiting on its (open, empty) stdin.
_READY_THEN_INSPECT = (
    "import sys, entra_passthrough.cli as cli, entra_passthrough._inspect; "
    "print('ready', file=sys.stderr, flush=True); "
    "sys.exit(cli.main(['inspect', '-']))"
)


def test_ctrl_c_while_inspect_reads_stdin() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _READY_THEN_INSPECT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_clean_env(),
        text=True,
    )
    try:
        assert proc.stderr is not None
        assert proc.stderr.readline().strip() == "ready"
        time.sleep(0.5)  # from the print into main(): well under this
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    assert "KeyboardInterrupt" not in err, err
    assert err.strip() == "entra-passthrough inspect: interrupted", err
    assert out == ""


def test_no_command_is_a_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "entra_passthrough"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("usage: entra-passthrough")
    assert "COMMAND" in done.stderr
    assert done.stdout == ""


def test_help_still_exits_0_on_stdout() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "entra_passthrough", "--help"],
        capture_output=True,
        text=True,
        env=_clean_env(),
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: entra-passthrough")
    assert done.stderr == ""
