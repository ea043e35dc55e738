"""``ManagedIdentity`` where the environment names no managed identity host and nothing answers
at IMDS (a laptop, a CI runner): the error says that no host was detected, names the variables
looked at and the IMDS address actually asked (``AZURE_POD_IDENTITY_AUTHORITY_HOST`` when set),
and does not open its fix with "nothing to configure if it is transient". Before, it read "the
connection to the managed identity endpoint failed ... Fix: nothing to configure if it is
transient ... or the IMDS address 169.254.169.254", whatever address had been asked.

Real parts: MSAL's ``ManagedIdentityClient`` sends IMDS's request to a port on 127.0.0.1 that
refuses connections (or to a listener that never answers, under short timeouts): no wait beyond
a second or two."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from entra_passthrough import ManagedIdentity, Policy, SourceUnavailable, Timeouts, TokenChain
from entra_passthrough._http import SHARED_THROTTLE
from entra_passthrough.testing import EntraEmulator

SCOPE = ["api://x/.default"]
#: One attempt, short waits: the test's bound, not the source's defaults.
SHORT = Timeouts(connect=1.0, read=0.5, deadline=3.0, retries=0, negative_ttl=0.0)
NAMED = (
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "IDENTITY_SERVER_THUMBPRINT",
    "IMDS_ENDPOINT",
    "MSI_ENDPOINT",
    "AZURE_FEDERATED_TOKEN_FILE",
)


@pytest.fixture
def bare_host(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No managed identity host variable in the process environment (MSAL reads it there)."""
    for name in (
        *EntraEmulator.MI_HOST_VARIABLES,
        "AZURE_FEDERATED_TOKEN_FILE",
        "AZURE_TENANT_ID",
        "AZURE_AUTHORITY_HOST",
        "AZURE_CLIENT_ID",
    ):
        monkeypatch.delenv(name, raising=False)
    SHARED_THROTTLE.clear()
    yield
    SHARED_THROTTLE.clear()


def refused_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def failure(timeouts: Timeouts | None = None) -> SourceUnavailable:
    mi = ManagedIdentity(timeouts=timeouts) if timeouts else ManagedIdentity()
    chain = TokenChain([mi], policy=Policy.APP_ONLY)
    started = time.monotonic()
    try:
        with pytest.raises(SourceUnavailable) as info:
            chain.get_token(SCOPE)
    finally:
        chain.close()
    assert time.monotonic() - started < 10
    return info.value


def test_a_refused_imds_names_the_variables_and_the_address_asked(
    bare_host: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = refused_port()
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", f"http://127.0.0.1:{port}")
    err = failure()  # the source's own timeouts: a refused port fails at once, retries and all
    text = str(err)
    assert "No managed identity host was detected (none of " in text, text
    for name in NAMED:
        assert name in text, name
    assert f"IMDS at http://127.0.0.1:{port} (AZURE_POD_IDENTITY_AUTHORITY_HOST)" in text, text
    assert "169.254.169.254 (VMs" not in text  # not the address that was asked
    assert "connection to the managed identity endpoint failed" in text
    fix = str(err.fix)
    assert not fix.startswith("nothing to configure")
    assert "off Azure" in fix
    assert "AzureCli" in fix
    assert err.failure == "connection failed"


def test_a_silent_imds_says_the_same_within_its_timeouts(
    bare_host: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    held: list[socket.socket] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    port = listener.getsockname()[1]
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", f"http://127.0.0.1:{port}/")
    try:
        err = failure(SHORT)
    finally:
        listener.close()
        for conn in held:
            conn.close()
    text = str(err)
    assert "No managed identity host was detected (none of " in text, text
    assert f"IMDS at http://127.0.0.1:{port} (AZURE_POD_IDENTITY_AUTHORITY_HOST)" in text
    assert not str(err.fix).startswith("nothing to configure")


def test_half_a_hosts_variables_is_named(bare_host: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """``IMDS_ENDPOINT`` without ``IDENTITY_ENDPOINT`` names no host (Azure Arc sets both): the
    message says it is the only one set."""
    monkeypatch.setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", f"http://127.0.0.1:{refused_port()}")
    monkeypatch.setenv("IMDS_ENDPOINT", "http://127.0.0.1:1")
    text = str(failure(SHORT))
    assert "only IMDS_ENDPOINT is set)" in text, text
    assert "none of" not in text


def test_the_address_shown_is_its_scheme_host_and_port_only(
    bare_host: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = refused_port()
    monkeypatch.setenv(
        "AZURE_POD_IDENTITY_AUTHORITY_HOST", f"http://user:pa55w0rdvalue@127.0.0.1:{port}/p?q=1"
    )
    text = str(failure(SHORT))
    assert f"IMDS at http://127.0.0.1:{port} (AZURE_POD_IDENTITY_AUTHORITY_HOST)" in text
    assert "pa55w0rd" not in text
    assert "user" not in text


def test_the_default_address_is_the_link_local_one(bare_host: None) -> None:
    from entra_passthrough._sources.managed_identity import _imds_address

    assert _imds_address() == "http://169.254.169.254"


def test_a_named_endpoint_keeps_its_own_message(bare_host: None) -> None:
    """An App Service endpoint that refuses: a host was detected, so no "no host" text."""
    mi = ManagedIdentity(
        endpoint=f"http://127.0.0.1:{refused_port()}/msi/token", header="h", timeouts=SHORT
    )
    chain = TokenChain([mi], policy=Policy.APP_ONLY)
    try:
        with pytest.raises(SourceUnavailable) as info:
            chain.get_token(SCOPE)
    finally:
        chain.close()
    assert "No managed identity host was detected" not in str(info.value)
    assert "(app_service) failed" in str(info.value)
