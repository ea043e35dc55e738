"""The command line in a hostile environment: a console whose encoding cannot write a character
of the output (Windows' cp1252, ``LC_ALL=C`` without UTF-8 mode) gets it escaped instead of a
``UnicodeEncodeError`` traceback with no report (``doctor``); a host with no writable temporary
folder (a read-only container file system) is told so, not "could not listen on 127.0.0.1"
(``emulator``). Real processes, the emulator over HTTPS."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from entra_passthrough.testing import EntraEmulator


def test_doctor_escapes_what_the_console_cannot_write(tmp_path: Path) -> None:
    folder = tmp_path / "Łukasz"
    folder.mkdir()
    with EntraEmulator() as idp:
        shutil.copy(idp.ca_file, folder / "ca.pem")
        env = {
            **os.environ,
            "PYTHONIOENCODING": "cp1252",
            "PYTHONUTF8": "0",
            "ENTRA_PASSTHROUGH_CLIENT_ID": idp.agent.client_id,
            "AZURE_TENANT_ID": idp.tenant_id,
            "ENTRA_PASSTHROUGH_CLIENT_SECRET": idp.agent.secret,
            "AZURE_AUTHORITY_HOST": idp.url,
            "ENTRA_PASSTHROUGH_CA_FILE": str(folder / "ca.pem"),
        }
        done = subprocess.run(
            [sys.executable, "-m", "entra_passthrough", "doctor"],
            env=env,
            capture_output=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    err = done.stderr.decode("utf-8", "replace")
    out = done.stdout.decode("cp1252")
    assert "Traceback" not in err, err[-2000:]
    assert done.returncode in (0, 1), err[-2000:]
    assert "\\u0141ukasz" in out  # the path, escaped: the report is all there


def test_the_emulator_says_no_temporary_folder_can_be_written() -> None:
    code = (
        "import sys, tempfile\n"
        "tempfile.tempdir = '/proc/self'  # a folder nothing can be created in\n"
        "from entra_passthrough.cli import main\n"
        "sys.exit(main(['emulator', '--hide-secrets']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1, done.stderr[-2000:]
    assert "could not listen" not in lines[0]
    assert "/proc/self" in lines[0]
    assert "TMPDIR" in lines[0]
