"""AzureCli: a cancelled or timed-out call kills the `az` process it started, and what that
process started."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path

import pytest


async def test_a_cancelled_azure_cli_call_kills_the_az_process(tmp_path: Path) -> None:
    # A client that goes away while `az` runs must not leave the process behind.
    import asyncio
    import os
    import stat
    import sys

    from entra_passthrough import AzureCli, TokenRequest

    started = tmp_path / "pid"
    script = tmp_path / "az"
    script.write_text(
        f"#!{sys.executable}\n"
        "import os, pathlib, time\n"
        f"pathlib.Path({str(started)!r}).write_text(str(os.getpid()))\n"
        "time.sleep(60)\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    az = AzureCli(executable=str(script))
    task = asyncio.create_task(az.get_token_async(TokenRequest(("api://x/.default",))))
    for _ in range(2000):  # until the stand-in runs (bounded)
        if started.exists() and started.read_text():
            break
        await asyncio.sleep(0.005)
    pid = int(started.read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped by the source, not left running


def _running(pid: int) -> bool:
    """The process exists and is not a zombie (a killed orphan may wait for its reaper)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] != "Z"


@pytest.mark.skipif(sys.platform == "win32", reason="process groups; /proc")
@pytest.mark.parametrize("found", ["executable", "on_path"])
@pytest.mark.parametrize("driver", ["sync", "async"])
async def test_a_timed_out_azure_cli_call_kills_what_the_cli_started(
    tmp_path: Path, driver: str, found: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `az` is a shell script that runs Python as its child: killing only the script left the
    # child running and holding the output pipes, so the call waited for the child's whole run
    # (60 s here) instead of its 1 s timeout, and the child ran to its end.
    from entra_passthrough import AzureCli, SourceUnavailable, TokenRequest

    started, finished = tmp_path / "pid", tmp_path / "finished"
    child = (
        "import os, pathlib, time; "
        f"pathlib.Path({str(started)!r}).write_text(str(os.getpid())); "
        "time.sleep(60); "
        f"pathlib.Path({str(finished)!r}).write_text('ran to its end')"
    )
    script = tmp_path / "az"
    script.write_text(f'#!/bin/sh\n"{sys.executable}" -c "{child}"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    if found == "on_path":  # the default: `az` looked up on PATH (the sync path went through
        # azure-identity there, whose timeout killed only the script, and said nothing of it)
        monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
        az = AzureCli(timeout=1.0)
    else:
        az = AzureCli(executable=str(script), timeout=1.0)
    request = TokenRequest(("api://x/.default",))
    if driver == "sync":
        call = asyncio.to_thread(az.get_token, request)
    else:
        call = az.get_token_async(request)
    try:
        with pytest.raises(SourceUnavailable, match="did not answer within 1 s") as info:
            await call
    finally:
        az.close()
    assert "timeout=" in (info.value.fix or "")  # the limit to raise, and how to see why
    assert "by hand" in (info.value.fix or "")
    assert not finished.exists()
    if not started.exists():
        # A loaded machine: the group was killed before the child wrote its pid (a child that
        # had not started yet was killed with its group). Nothing is left to outlive the call.
        return
    pid = int(started.read_text())
    for _ in range(2000):  # SIGKILL is delivered at once; the /proc entry may trail (bounded)
        if not _running(pid):
            break
        await asyncio.sleep(0.005)
    assert not _running(pid), "the CLI's child outlived the timed-out call"


@pytest.mark.skipif(sys.platform == "win32", reason="a shell script as az")
@pytest.mark.parametrize(
    ("body", "said"),
    [
        # az's own words when the network is down: no answer from Entra in them
        (
            "echo 'ERROR: HTTPSConnectionPool(host=login.microsoftonline.com, port=443): Max "
            "retries exceeded (name resolution)' >&2; exit 1",
            "exited with status 1",
        ),
        # killed after it printed part of its output
        ("printf '{\\n  \"accessToken\": '; kill -9 $$", "killed by signal 9"),
    ],
    ids=["network", "killed-mid-output"],
)
def test_a_cli_failure_without_an_answer_from_entra_is_not_called_entra_s(
    tmp_path: Path, body: str, said: str
) -> None:
    """It read "EntraError: az could not get a token: ..." (an error Entra answered), with no
    code and no fix; it is the CLI's failure (SourceUnavailable), with how to see why."""
    from entra_passthrough import AzureCli, EntraError, SourceUnavailable, TokenRequest

    script = tmp_path / "az"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    az = AzureCli(executable=str(script), timeout=10.0)
    try:
        with pytest.raises(SourceUnavailable) as info:
            az.get_token(TokenRequest(("api://x/.default",)))
    finally:
        az.close()
    assert not isinstance(info.value, EntraError)
    assert said in str(info.value)
    assert "by hand" in (info.value.fix or "")
