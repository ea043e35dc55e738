"""A client certificate file and a federated (workload identity) token file are read with a
bound, and only as regular files: a certificate over 1 MiB, a token file over 64 KiB, a device
(``/dev/zero`` has no end) or a pipe (no writer: ``open`` blocks for ever) is refused with a
``ConfigurationError`` naming the setting and the limit, before anything is read. Read whole,
``/dev/zero`` took the process's memory (over 1.5 GB in 2 s) and a pipe hung the start-up.

The token file is re-read when it rotates: a rotation to a file over the bound is refused
(``SourceUnavailable``, nothing is sent to Entra) and the next good rotation is read again."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from entra_passthrough import (
    ConfigurationError,
    OnBehalfOf,
    SourceUnavailable,
    TokenChain,
    bind_caller,
)
from entra_passthrough.testing import EntraEmulator

from .conftest import decode, make_mi, make_obo, mcp_scope, token_posts

CLIENT = "6cd0b7f2-2473-5d24-a86c-13c1e27b8228"
TENANT = "979269af-69e0-5206-a3f3-b961c29811d3"
BASE = {"ENTRA_PASSTHROUGH_CLIENT_ID": CLIENT, "AZURE_TENANT_ID": TENANT}
posix_only = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs /dev/zero and mkfifo")


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe"
    os.mkfifo(path)
    return path


def _sparse(path: Path, size: int) -> Path:
    """A file of ``size`` bytes (zeros) that takes no disk."""
    with path.open("wb") as handle:
        handle.truncate(size)
    return path


def test_a_certificate_file_over_1_mib_is_refused_unread(tmp_path: Path) -> None:
    big = _sparse(tmp_path / "agent.pem", 8 * 1024 * 1024)
    env = {**BASE, "ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH": str(big)}
    with pytest.raises(ConfigurationError, match="larger than 1 MiB") as info:
        OnBehalfOf.from_env(env)
    assert "ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH" in str(info.value)  # the fix names it


# In a child process with its address space capped: read whole, /dev/zero would take the
# memory of the test run (the cap turns that into a MemoryError), a pipe would block (the
# timeout is a safety net, not a measure).
_CHILD = textwrap.dedent(
    """
    import resource, sys
    cap = 2 * 1024 ** 3
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    from entra_passthrough import ConfigurationError, OnBehalfOf
    client, tenant, variable, path = sys.argv[1:]
    env = {"ENTRA_PASSTHROUGH_CLIENT_ID": client, "AZURE_TENANT_ID": tenant, variable: path}
    try:
        OnBehalfOf.from_env(env)
    except ConfigurationError as exc:
        print("ConfigurationError:", exc)
    else:
        print("built")
    """
)


def _build_in_child(variable: str, path: Path | str) -> str:
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, CLIENT, TENANT, variable, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            env=os.environ,
        )
    except subprocess.TimeoutExpired:
        return "no answer: the build blocked"
    return done.stdout + done.stderr


@posix_only
@pytest.mark.parametrize("which", ["/dev/zero", "fifo"])
def test_a_device_or_pipe_as_certificate_is_refused_before_any_read(which: str, fifo: Path) -> None:
    path = fifo if which == "fifo" else which
    out = _build_in_child("ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH", path)
    assert out.startswith("ConfigurationError: the client certificate file is not a regular "), out
    assert "ENTRA_PASSTHROUGH_CLIENT_CERTIFICATE_PATH" in out


@posix_only
@pytest.mark.parametrize("which", ["/dev/zero", "fifo", "large"])
def test_a_federated_token_file_not_a_small_regular_file_refuses_the_build(
    which: str, fifo: Path, tmp_path: Path
) -> None:
    paths = {"/dev/zero": "/dev/zero", "fifo": str(fifo)}
    path = paths.get(which) or str(_sparse(tmp_path / "token", 64 * 1024 + 1))
    with pytest.raises(ConfigurationError) as info:
        TokenChain.from_env({**BASE, "AZURE_FEDERATED_TOKEN_FILE": path})
    text = str(info.value)
    assert f"the federated token file {path!r} " in text
    assert "AZURE_FEDERATED_TOKEN_FILE" in text
    if which == "large":
        assert "is larger than 64 KiB" in text
    else:
        assert "is not a regular file" in text


def test_a_token_file_of_64_kib_is_still_read(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("e" * (64 * 1024 - 1) + "\n")
    source = OnBehalfOf.from_env({**BASE, "AZURE_FEDERATED_TOKEN_FILE": str(path)})
    source.close()


def _rotate(path: Path, content: str) -> None:
    path.write_text(content)
    later = time.time_ns() + 10**9  # a new stamp even within the file system's resolution
    os.utime(path, ns=(later, later))


async def test_a_rotation_over_the_bound_is_refused_and_the_next_one_is_read(
    idp: EntraEmulator, tmp_path: Path
) -> None:
    token_file = tmp_path / "federated-token"
    federated = make_mi(idp).token_for_resource("api://AzureADTokenExchange")
    token_file.write_text(federated)
    chain = TokenChain([make_obo(idp, federated_token_file=str(token_file))])
    try:
        with bind_caller(token=idp.user_token("alice", audience=idp.agent.client_id)):
            result = await chain.get_token_async(mcp_scope(idp))
        assert decode(result.token)["oid"] == idp.users["alice"].oid

        _rotate(token_file, "a" * (64 * 1024 + 1))
        posts = token_posts(idp)
        with (
            bind_caller(token=idp.user_token("bob", audience=idp.agent.client_id)),
            pytest.raises(SourceUnavailable, match="is larger than 64 KiB") as info,
        ):
            await chain.get_token_async(mcp_scope(idp))
        assert "aaaa" not in str(info.value)
        assert token_posts(idp) == posts  # nothing was sent

        _rotate(token_file, federated + "\n")
        with bind_caller(token=idp.user_token("bob", audience=idp.agent.client_id)):
            result = await chain.get_token_async(mcp_scope(idp))
        assert decode(result.token)["oid"] == idp.users["bob"].oid
    finally:
        chain.close()
