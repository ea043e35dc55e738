"""AzureCli's ``timeout`` bounds the call when ``az`` started a process that left its process
group (its own session, ``setsid``) and holds az's stdout/stderr: the CLI's group was killed at
the timeout, but the call then waited for the pipes to close, i.e. for that process to end (the
typed error came after the child's whole run, 60 s here; a child that never ends held the caller
and its worker for good). It is the timeout error while the child still runs, and the chain
serves the next call."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import os
import signal
import stat
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from entra_passthrough import AzureCli, Policy, SourceUnavailable, TokenChain, TokenRequest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="process groups, sessions; a shell az"),
]

RESOURCE = "api://11111111-2222-3333-4444-555555555555"
SCOPE = [f"{RESOURCE}/.default"]
#: Safety net only: the escaped child sleeps 60 s, the call's timeout is 2 s.
CEILING = 15.0


def _escaping_az(script: Path, pidfile: Path) -> None:
    """An ``az`` that starts a child in a session of its own (it inherits stdout and stderr,
    and sleeps 60 s), waits until the child has left the group, then hangs."""
    child = (
        "import os, time; os.setsid(); "
        f"p = {str(pidfile)!r}; open(p + '.tmp', 'w').write(str(os.getpid())); "
        "os.replace(p + '.tmp', p); time.sleep(60)"
    )
    script.write_text(
        "#!/bin/sh\n"
        f'"{sys.executable}" -I -S -c "{child}" &\n'
        f'while [ ! -s "{pidfile}" ]; do sleep 0.01; done\n'
        "exec sleep 300\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def _answering_az(script: Path) -> str:
    """An ``az`` that prints a token for ``RESOURCE`` as az does."""

    def enc(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    exp = int(time.time()) + 3600
    token = f"{enc({'alg': 'RS256', 'typ': 'JWT'})}.{enc({'aud': RESOURCE, 'exp': exp})}.c2ln"
    out = {"accessToken": token, "expiresOn": "2099-01-01 00:00:00.000000", "expires_on": exp}
    script.write_text(f"#!{sys.executable}\nprint({json.dumps(out)!r})\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return token


def _call(chain: TokenChain, driver: str) -> tuple[threading.Thread, dict[str, Any]]:
    """The chain's call in a thread of the test's own (so that a call held by the defect does
    not hold the test): ``result`` gets ``token`` or ``error``."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            if driver == "sync":
                result["token"] = chain.get_token(SCOPE)
            else:
                result["token"] = asyncio.run(chain.get_token_async(SCOPE))
        except BaseException as exc:  # handed to the test
            result["error"] = exc

    thread = threading.Thread(target=run, name=f"az-escaped-{driver}", daemon=True)
    thread.start()
    return thread, result


def _kill(pidfile: Path) -> None:
    """Kill the escaped child (not ours to reap: its parent, the stand-in, is gone)."""
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        os.kill(int(pidfile.read_text()), signal.SIGKILL)


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_child_that_left_the_clis_group_does_not_hold_the_timed_out_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, driver: str
) -> None:
    script, pidfile = tmp_path / "az", tmp_path / "escaped.pid"
    _escaping_az(script, pidfile)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    chain = TokenChain([AzureCli(timeout=2.0)], policy=Policy.DEVELOPER)
    try:
        thread, result = _call(chain, driver)
        thread.join(CEILING)
        held = thread.is_alive()
        assert pidfile.exists(), "the stand-in's child did not leave the group before the timeout"
        escaped = int(pidfile.read_text())
        os.kill(escaped, 0)  # still running when the call ended: the call did not wait for it
        if held:
            _kill(pidfile)  # lets the held call end, to report it
            thread.join(CEILING)
        assert not held, "the timed-out call waited for the escaped child's pipes"
        error = result.get("error")
        assert isinstance(error, SourceUnavailable), repr(error)
        assert "did not answer within 2 s" in str(error)
        assert "timeout=" in (error.fix or "")

        # Nothing is left blocked: the next call runs az again and is served its token.
        token = _answering_az(script)
        thread, result = _call(chain, driver)
        thread.join(CEILING)
        assert not thread.is_alive(), "the next call was held"
        assert "error" not in result, repr(result.get("error"))
        assert result["token"].token == token
    finally:
        _kill(pidfile)
        chain.close()
    gc.collect()  # an unclosed pipe or transport warns here (warnings are errors)


async def test_a_cancelled_call_is_not_held_by_a_child_that_left_the_clis_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The client went away while az ran: the cancel killed the CLI's group, then waited for the
    # pipes the escaped child holds (its whole run).
    script, pidfile = tmp_path / "az", tmp_path / "escaped.pid"
    _escaping_az(script, pidfile)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    az = AzureCli(timeout=CEILING)  # the source itself: the chain's caller may leave a flight
    try:
        task = asyncio.create_task(az.get_token_async(TokenRequest(tuple(SCOPE))))
        for _ in range(2000):  # until the child has left the group (bounded)
            if pidfile.exists() or task.done():
                break
            await asyncio.sleep(0.005)
        assert pidfile.exists(), "the stand-in's child did not leave the group"
        await asyncio.sleep(0.05)  # the stand-in is past its wait: it hangs in `sleep 300`
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=CEILING)
        held = not done
        os.kill(int(pidfile.read_text()), 0)  # still running: the cancel did not wait for it
        if held:
            _kill(pidfile)  # lets the held call end, to report it
            await asyncio.wait({task}, timeout=CEILING)
        assert not held, "the cancelled call waited for the escaped child's pipes"
        assert task.cancelled()
    finally:
        _kill(pidfile)
        az.close()
    gc.collect()  # an unclosed pipe or transport warns here (warnings are errors)
