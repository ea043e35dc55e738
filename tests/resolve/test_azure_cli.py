"""AzureCli: a cancelled call kills and reaps the `az` process it started."""

from __future__ import annotations

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
