"""A managed identity endpoint that answers 200 with a token but no usable expiry.

App Service, Machine Learning and Service Fabric send ``expires_on``, Azure Arc ``expires_in``.
With that field missing, ``0`` or ``""``, MSAL makes up an error of its own (``invalid_scope``
for App Service and Machine Learning, ``invalid_request`` with the whole body for Azure Arc,
and the library's Service Fabric request did the same): the library reported it as the host's
refusal, with a fix about the identity's assignment. It is a malformed answer, as one whose
expiry is garbage already was, and the token is in no text.

The stand-in endpoint is a real HTTP(S) server on 127.0.0.1 that forwards each request to the
emulator's managed identity endpoint of that host (its secret header, Arc's challenge) and
rewrites only the expiry of the emulator's real answer; the requests are MSAL's (the library's
on Service Fabric), as in production. A fault the emulator injects reaches the caller through
it unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import ssl
import traceback
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from _support.servers import serve_in_thread
from entra_passthrough import (
    EntraError,
    ManagedIdentity,
    Policy,
    SourceUnavailable,
    Timeouts,
    TokenChain,
)
from entra_passthrough._http import SHARED_THROTTLE
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._ca import make_tls_material

from .conftest import mcp_scope

#: No retry and no negative entry: one request per call, and no test closes the endpoint for
#: the next.
ONCE = Timeouts(connect=2.0, read=5.0, deadline=10.0, retries=0, negative_ttl=0.0)

#: The expiry each shape leaves in the answer (``None``: the field is removed).
SHAPES: dict[str, object] = {"missing": None, "zero": 0, "empty": ""}
#: Written into the answer's text as is: valid JSON that Python reads as infinity (MSAL's int()
#: of it raises OverflowError).
RAW_SHAPES = {"infinite": "1e400"}

#: The field of the expiry each host's answer carries.
FIELD = {
    "app_service": "expires_on",
    "machine_learning": "expires_on",
    "service_fabric": "expires_on",
    "azure_arc": "expires_in",
}

HOSTS = ["app_service", "machine_learning", "service_fabric", "azure_arc"]


class StandIn:
    """Forwards to the emulator; rewrites a 200's expiry per the path's first segment."""

    def __init__(self, idp: EntraEmulator) -> None:
        self.idp = idp
        self.issued: list[str] = []  # the tokens it handed out (to search every text for)
        self.base = ""

    def upstream(self, rest: str) -> str:
        if rest.startswith("servicefabric/"):
            return f"{self.idp.url}/{rest}"  # HTTPS, the emulator's CA
        http_base = self.idp.mi_env("app_service")["IDENTITY_ENDPOINT"].rsplit("/msi/token", 1)[0]
        return f"{http_base}/{rest}"

    async def answer(self, request: Request) -> Response:
        shape, rest = request.path_params["shape"], request.path_params["rest"]
        keep = ("secret", "x-identity-header", "metadata", "authorization")
        headers = {k: v for k, v in request.headers.items() if k.lower() in keep}
        trust = ssl.create_default_context(cafile=self.idp.ca_file)
        async with httpx.AsyncClient(verify=trust, trust_env=False) as client:
            answer = await client.get(
                self.upstream(rest), params=request.query_params, headers=headers
            )
        passed = {k: v for k, v in answer.headers.items() if k.lower() == "www-authenticate"}
        if answer.status_code != 200:
            return Response(
                answer.content,
                status_code=answer.status_code,
                headers=passed,
                media_type=answer.headers.get("content-type"),
            )
        body = answer.json()
        self.issued.append(body["access_token"])
        field = "expires_in" if "metadata/identity" in rest else "expires_on"
        body.pop(field, None)
        if shape in RAW_SHAPES:
            body[field] = "__raw__"
            text = json.dumps(body).replace('"__raw__"', RAW_SHAPES[shape])
            return Response(text, media_type="application/json")
        if SHAPES[shape] is not None:
            body[field] = SHAPES[shape]
        return Response(json.dumps(body), media_type="application/json")


def _arc_writable() -> bool:
    folder = Path("/var/opt/azcmagent/tokens")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


@pytest.fixture(scope="module")
def stand_in(
    entra_emulator: EntraEmulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[StandIn, str, str]]:
    """(the stand-in, its HTTP base URL, its HTTPS base URL: Service Fabric's, pinned)."""
    handler = StandIn(entra_emulator)
    routes = [Route("/{shape}/{rest:path}", handler.answer, methods=["GET"])]
    tls = make_tls_material()
    folder = tmp_path_factory.mktemp("mi-expiry-tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    cert.write_bytes(tls.server_cert_pem)
    key.write_bytes(tls.server_key_pem)
    der = x509.load_pem_x509_certificate(tls.server_cert_pem).public_bytes(Encoding.DER)
    thumbprint = hashlib.sha1(der).hexdigest()  # Service Fabric's pin is SHA-1
    with (
        serve_in_thread(Starlette(routes=routes), name="mi-no-expiry") as http_base,
        serve_in_thread(
            Starlette(routes=routes),
            certfile=str(cert),
            keyfile=str(key),
            name="mi-no-expiry-fabric",
        ) as https_base,
    ):
        handler.base = http_base
        yield handler, http_base, f"{https_base}|{thumbprint}"


def _host_env(idp: EntraEmulator, host: str, shape: str, http: str, https: str) -> dict[str, str]:
    header = idp.mi_env("app_service")["IDENTITY_HEADER"]
    if host == "app_service":
        return {"IDENTITY_ENDPOINT": f"{http}/{shape}/msi/token", "IDENTITY_HEADER": header}
    if host == "machine_learning":
        return {"MSI_ENDPOINT": f"{http}/{shape}/msi/token", "MSI_SECRET": header}
    if host == "azure_arc":
        return {
            "IDENTITY_ENDPOINT": f"{http}/{shape}/metadata/identity/oauth2/token",
            "IMDS_ENDPOINT": f"{http}/{shape}",
        }
    base, thumbprint = https.split("|")
    return {
        "IDENTITY_ENDPOINT": f"{base}/{shape}/servicefabric/token",
        "IDENTITY_HEADER": idp.mi_env("service_fabric")["IDENTITY_HEADER"],
        "IDENTITY_SERVER_THUMBPRINT": thumbprint,
    }


@pytest.fixture
def on_host(idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in (*EntraEmulator.MI_HOST_VARIABLES, "AZURE_CLIENT_ID", "IMDS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    SHARED_THROTTLE.clear()
    yield monkeypatch
    SHARED_THROTTLE.clear()


def _texts(error: BaseException, caplog: pytest.LogCaptureFixture) -> str:
    """Everything a caller or an operator sees: the error (str, repr, fix, traceback, chain)
    and every log record."""
    parts = [str(error), repr(error), "".join(traceback.format_exception(error))]
    parts.extend(repr(vars(e)) for e in (error, error.__cause__, error.__context__) if e)
    parts.extend(r.getMessage() for r in caplog.records)
    return "\n".join(parts)


def _fragments_of(tokens: list[str], text: str) -> list[str]:
    """Any 16-character piece of an issued token found in ``text``."""
    return [
        t[i : i + 16] for t in tokens for i in range(0, len(t) - 15, 8) if t[i : i + 16] in text
    ]


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("host", HOSTS)
def test_a_token_without_a_usable_expiry_is_a_malformed_answer(
    idp: EntraEmulator,
    stand_in: tuple[StandIn, str, str],
    on_host: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    host: str,
    shape: str,
) -> None:
    if host == "azure_arc" and not _arc_writable():
        pytest.skip("Azure Arc's challenge folder /var/opt/azcmagent/tokens is not writable here")
    handler, http, https = stand_in
    for name, value in _host_env(idp, host, shape, http, https).items():
        on_host.setenv(name, value)
    source = ManagedIdentity(timeouts=ONCE)
    assert f"host={host}" in repr(source)
    chain = TokenChain([source], policy=Policy.APP_ONLY)
    issued = len(handler.issued)
    caplog.set_level(logging.DEBUG, logger="entra_passthrough")
    try:
        with pytest.raises(SourceUnavailable) as info:
            chain.get_token(mcp_scope(idp))
    finally:
        chain.close()
    assert len(handler.issued) == issued + 1  # the endpoint did answer with a token
    error = info.value
    text = str(error)
    assert error.failure == "malformed token answer"
    assert "no usable expiry" in text, text
    assert f"({host})" in text
    assert "The token was not used" in text
    # Not a refusal, and not sent after the identity's assignment or the resource.
    assert "refused" not in text
    assert "invalid_scope" not in text
    assert "None, None" not in text
    fix = error.fix or ""
    assert "assigned" not in fix
    assert "resource exists" not in fix
    assert "proxy" in fix  # what answers at the endpoint's address
    assert not _fragments_of(handler.issued, _texts(error, caplog))


@pytest.mark.parametrize("host", ["app_service", "machine_learning"])
def test_the_next_answer_is_judged_on_its_own(
    idp: EntraEmulator,
    stand_in: tuple[StandIn, str, str],
    on_host: pytest.MonkeyPatch,
    host: str,
) -> None:
    """After a malformed answer, a refusal the emulator injects (HTTP 400 through the stand-in)
    is the host's refusal again, and a fault-free answer with its expiry is a token: what was
    remembered of one answer is not carried to the next."""
    _, http, https = stand_in
    for name, value in _host_env(idp, host, "missing", http, https).items():
        on_host.setenv(name, value)
    source = ManagedIdentity(timeouts=ONCE)
    chain = TokenChain([source], policy=Policy.APP_ONLY)
    try:
        with pytest.raises(SourceUnavailable):
            chain.get_token(mcp_scope(idp))
        idp.inject_fault("msi", status=400)
        with pytest.raises(EntraError) as info:
            chain.get_token(mcp_scope(idp))
        assert "malformed" not in str(info.value)
        assert "refused the token request" in str(info.value)  # the host's refusal, decoded
        assert info.value.code is not None
        assert info.value.code.code == 90100
    finally:
        chain.close()
        idp.clear_faults()
    # The same host with the expiry left in place: served (the stand-in itself is not at fault).
    variable = "MSI_ENDPOINT" if host == "machine_learning" else "IDENTITY_ENDPOINT"
    on_host.setenv(variable, idp.mi_env("app_service")["IDENTITY_ENDPOINT"])
    served = ManagedIdentity.from_env()
    chain = TokenChain([served], policy=Policy.APP_ONLY)
    try:
        assert chain.get_token(mcp_scope(idp)).token
    finally:
        chain.close()


def test_the_explicit_endpoint_is_judged_the_same(
    idp: EntraEmulator, stand_in: tuple[StandIn, str, str], on_host: pytest.MonkeyPatch
) -> None:
    handler, http, _ = stand_in
    source = ManagedIdentity(
        client_id=idp.managed_identity.client_id,
        endpoint=f"{http}/missing/msi/token",
        header=idp.mi_env("app_service")["IDENTITY_HEADER"],
        timeouts=ONCE,
    )
    chain = TokenChain([source], policy=Policy.APP_ONLY)
    try:
        with pytest.raises(SourceUnavailable) as info:
            chain.get_token(mcp_scope(idp))
    finally:
        chain.close()
    assert info.value.failure == "malformed token answer"
    assert "user-assigned" not in (info.value.fix or "")
    assert not _fragments_of(handler.issued, f"{info.value} {info.value!r}")


@pytest.mark.parametrize("host", ["app_service", "machine_learning", "service_fabric"])
def test_an_infinite_expiry_is_a_malformed_answer(
    idp: EntraEmulator,
    stand_in: tuple[StandIn, str, str],
    on_host: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    host: str,
) -> None:
    """``expires_on: 1e400``: MSAL's int() raised OverflowError, reported as "managed identity
    token request failed: OverflowError" with no fix (Service Fabric's own read said it)."""
    handler, http, https = stand_in
    for name, value in _host_env(idp, host, "infinite", http, https).items():
        on_host.setenv(name, value)
    chain = TokenChain([ManagedIdentity(timeouts=ONCE)], policy=Policy.APP_ONLY)
    caplog.set_level(logging.DEBUG, logger="entra_passthrough")
    try:
        with pytest.raises(SourceUnavailable) as info:
            chain.get_token(mcp_scope(idp))
    finally:
        chain.close()
    assert info.value.failure == "malformed token answer", str(info.value)
    assert info.value.fix
    assert not _fragments_of(handler.issued, _texts(info.value, caplog))
