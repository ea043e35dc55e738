"""No token reaches any log at any level, even when MSAL logs a token response it cannot parse.

MSAL's OAuth2 client logs a token response that is not JSON, whole, at ERROR: with a body cut by
one byte, the user's access, id and refresh tokens went to every handler (with no logging
configured, to Python's last-resort handler on stderr). The library puts a redacting filter on
the loggers of the packages it drives.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from entra_passthrough import Caller, EntraPassthroughError, OnBehalfOf, Timeouts, TokenChain
from entra_passthrough._redact import redact
from entra_passthrough.testing import EntraEmulator

from ._hygiene import error_text, leaks, where


def _obo(idp: EntraEmulator, http: object) -> OnBehalfOf:
    return OnBehalfOf(
        client_id=idp.agent.client_id,
        tenant_id=idp.tenant_id,
        client_secret=idp.agent.secret,
        authority_host=idp.url,
        http_client=http,
        # no negative cache: each cut is a new failure, and the recovery is immediate
        timeouts=Timeouts(negative_ttl=0, backoff=0),
    )


def test_truncated_token_response_never_logs_a_token(
    entra_emulator: EntraEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """Through the library: every answer cut (retries included), a typed error, no token."""
    idp = entra_emulator
    caplog.set_level(logging.DEBUG)  # every logger, every level
    http = idp.msal_http_client()
    chain = TokenChain([_obo(idp, http)])
    scope = [f"{idp.mcp.app_id_uri}/.default"]
    errors: list[str] = []
    try:
        for cut in (1, 2, 40):
            idp.inject_fault("token", truncate=cut, count=50)
            caller = Caller.from_token(idp.user_token("alice", audience=idp.agent.client_id))
            with pytest.raises(EntraPassthroughError) as info:
                asyncio.run(chain.get_token_async(scope, caller=caller))
            errors.append(error_text(info.value))
            idp.clear_faults()
        # and the endpoint recovered: a token is issued (so there was one to leak)
        caller = Caller.from_token(idp.user_token("alice", audience=idp.agent.client_id))
        assert asyncio.run(chain.get_token_async(scope, caller=caller)).token
    finally:
        idp.clear_faults()
        chain.close()
        http.close()
    blob = "\n".join(
        [caplog.text, *(r.getMessage() for r in caplog.records), *errors]
        + [r.exc_text or "" for r in caplog.records]
    )
    assert leaks(blob, idp.issued()) == [], where(blob, idp.issued())


def test_msal_own_log_of_a_cut_response_is_redacted(
    entra_emulator: EntraEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    """MSAL driven directly (as any code in the process may): its ERROR record of the cut body
    passes the filter the library installed on MSAL's loggers."""
    import msal

    import entra_passthrough  # noqa: F401  (importing the library installs the filter)

    idp = entra_emulator
    caplog.set_level(logging.DEBUG)
    http = idp.msal_http_client()
    app = msal.ConfidentialClientApplication(
        idp.agent.client_id,
        client_credential=idp.agent.secret,
        authority=f"{idp.url}/{idp.tenant_id}",
        http_client=http,
        instance_discovery=False,
    )
    scope = [f"{idp.mcp.app_id_uri}/.default"]
    try:
        idp.inject_fault("token", truncate=1)
        with pytest.raises(json.JSONDecodeError):  # MSAL lets its parser's error out
            app.acquire_token_on_behalf_of(
                idp.user_token("alice", audience=idp.agent.client_id), scope
            )
    finally:
        idp.clear_faults()
        http.close()
    records = [r for r in caplog.records if "not in json format" in r.getMessage()]
    assert records, "MSAL's record of the unparsable body was not produced"
    assert all("[redacted]" in r.getMessage() for r in records)
    blob = "\n".join([caplog.text, *(r.getMessage() for r in caplog.records)])
    assert leaks(blob, idp.issued()) == [], where(blob, idp.issued())


_CHILD = textwrap.dedent(
    """
    import asyncio, json, sys
    from entra_passthrough import Caller, OnBehalfOf, Timeouts, TokenChain
    from entra_passthrough.testing import EntraEmulator

    with EntraEmulator() as idp:
        http = idp.msal_http_client()
        chain = TokenChain([OnBehalfOf(client_id=idp.agent.client_id, tenant_id=idp.tenant_id,
            client_secret=idp.agent.secret, authority_host=idp.url, http_client=http,
            timeouts=Timeouts(negative_ttl=0, backoff=0))])
        scope = [idp.mcp.app_id_uri + "/.default"]
        for cut in (1, 7):
            idp.inject_fault("token", truncate=cut, count=50)
            caller = Caller.from_token(idp.user_token("alice", audience=idp.agent.client_id))
            try:
                asyncio.run(chain.get_token_async(scope, caller=caller))
            except Exception as exc:
                print("error:", type(exc).__name__, file=sys.stderr)
            idp.clear_faults()
        import msal
        app = msal.ConfidentialClientApplication(idp.agent.client_id,
            client_credential=idp.agent.secret, authority=idp.url + "/" + idp.tenant_id,
            http_client=http, instance_discovery=False)
        idp.inject_fault("token", truncate=3)
        try:
            app.acquire_token_on_behalf_of(
                idp.user_token("alice", audience=idp.agent.client_id), scope)
        except ValueError:
            print("error: msal", file=sys.stderr)
        chain.close()
        http.close()
        with open(sys.argv[1], "w") as f:
            json.dump(sorted(idp.issued()), f)
    """
)


def test_no_logging_configured_last_resort_stderr_has_no_token(tmp_path: Path) -> None:
    issued_file = tmp_path / "issued.json"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(issued_file)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]

    issued = json.loads(issued_file.read_text())
    assert issued
    assert "not in json format" in proc.stderr  # MSAL's ERROR record reached lastResort
    assert proc.stderr.count("error:") == 3
    assert leaks(proc.stdout + proc.stderr, issued) == []


@pytest.mark.parametrize(
    ("text", "gone"),
    [
        ('{"access_token": "eyJ0eXAi.eyJhdWQi.c2ln", "refresh_token": "1.AAb', "1.AAb"),
        ("client_id=a&client_secret=Qx8~abc.def&scope=x", "Qx8~abc.def"),
        ("assertion=eyJ0eXAiOiJKV1QifQ.eyJ4IjoxfQ.sig&x=1", "eyJ0eXAi"),
        ("GET /cb?code=0.AUoAxyz123&state=s HTTP/1.1", "0.AUoAxyz123"),
        ("Authorization: Bearer abc.def.ghi", "abc.def.ghi"),
        ("rt " + "A1b2" * 12, "A1b2" * 12),
    ],
)
def test_redact_removes_secret_shapes(text: str, gone: str) -> None:
    assert gone not in redact(text)
    assert "[redacted]" in redact(text)


def test_redact_keeps_ids_and_fingerprints() -> None:
    text = "tenant 6f1c7a2e-1111-2222-3333-444455556666 token sha256:0123456789ab AADSTS50013"
    assert redact(text) == text


@pytest.mark.parametrize(
    "scope",
    [
        "fc3e56bc-c5ce-5934-926e-1cd113a188a4/.default",
        "FC3E56BC-C5CE-5934-926E-1CD113A188A4/access_as_user",
    ],
)
def test_redact_keeps_a_scope_in_its_application_id_form(scope: str) -> None:
    """The scope a refused request asked for is what the operator must fix: a log line that
    names it keeps it (a 36-character id, a slash and a name is no secret's shape)."""
    text = f"token acquisition for {scope} api://x/y failed: EntraError (AADSTS70011)"
    assert redact(text) == text
    # ... but a secret next to it still goes, and a secret with a slash is not taken for one.
    assert "Qx8~abc" not in redact(f"{scope} client_secret=Qx8~abc.def")
    assert redact(f"{scope[:36]}/{'A1b2' * 12}") == "[redacted]"


def test_the_filter_is_on_the_loggers_of_the_packages_the_library_drives() -> None:
    import azure.identity  # noqa: F401  (module loggers are created at import)

    from entra_passthrough._redact import RedactingFilter

    TokenChain([])  # building a chain covers loggers created by later imports
    names = [
        "msal.oauth2cli.oauth2",
        "msal.application",
        "httpcore2.http11",
        "httpx",
        "uvicorn.access",
        "azure.identity._internal.get_token_mixin",
        "mcp",
    ]
    for name in names:
        filters = logging.getLogger(name).filters
        assert any(isinstance(f, RedactingFilter) for f in filters), name


def test_uvicorn_access_records_keep_their_shape() -> None:
    # uvicorn's access formatter unpacks record.args: redaction must keep the tuple.
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/callback?code=0.AUoAbcdefgh12345678&state=s", "1.1", 200),
        None,
    )
    from entra_passthrough._redact import RedactingFilter

    assert RedactingFilter().filter(record)
    assert isinstance(record.args, tuple)
    assert len(record.args) == 5
    assert record.args[4] == 200
    assert "0.AUoAbcdefgh12345678" not in record.getMessage()


def test_redaction_is_linear_in_its_input() -> None:
    """The JWT pattern was tried from every "eyJ" of a run without a dot, each try scanning to
    the run's end: 1 MB of "eyJ" took minutes (48 KB: 1.8 s), and a 16 KB request path in
    uvicorn's access log cost ~0.2 s of the event loop per request. No timing is asserted: before
    the fix this test runs into the suite's timeout."""
    for text in ("eyJ" * 350_000, "eyJ" * 350_000 + "..x", "x" + "eyJ" * 350_000 + ".a.b"):
        redact(text)
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    for text in (f"x{jwt}", f"prefix1{jwt}", f"a.b.{jwt}", f"{jwt}.{jwt}", f"t1 {jwt} t2"):
        assert "eyJzdWIiOiJ4In0" not in redact(text), text
        assert "c2lnbmF0dXJl" not in redact(text), text
    assert redact("entra_passthrough.chain x.eyJabc.") == "entra_passthrough.chain x.eyJabc."


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("'Authorization': 'Basic c2VjcmV0S2V5MTIz'", "'Authorization': 'Basic [redacted]'"),
        ("Authorization: Basic c2VjcmV0S2V5MTIz", "Authorization: Basic [redacted]"),
        ("Proxy-Authorization: Basic Zm9vOmJhcg==", "Proxy-Authorization: Basic [redacted]"),
        ('{"authorization": "SharedKey acct:c2ln"}', '{"authorization": "SharedKey [redacted]"}'),
        ("the Authorization header was missing", "the Authorization header was missing"),
    ],
)
def test_an_authorization_credential_goes_whatever_its_scheme(text: str, kept: str) -> None:
    # Short credentials too (an Arc challenge key is 32 characters, under the opaque-run rule).
    assert redact(text) == kept


_ARC_CHILD = textwrap.dedent(
    """
    import glob, logging, os, sys
    import entra_passthrough  # installs the filter
    from azure.identity import ManagedIdentityCredential
    from entra_passthrough import AzureCredential, Policy, TokenChain
    from entra_passthrough.testing import EntraEmulator

    records = []
    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))
    logging.getLogger().addHandler(Keep())
    logging.getLogger().setLevel(logging.DEBUG)
    with EntraEmulator() as idp:
        for name in (*EntraEmulator.MI_HOST_VARIABLES, "AZURE_CLIENT_ID", "IMDS_ENDPOINT"):
            os.environ.pop(name, None)
        os.environ.update(idp.mi_env("azure_arc"))
        before = set(glob.glob("/var/opt/azcmagent/tokens/*"))
        credential = ManagedIdentityCredential(logging_enable=True)  # azure-core's trace
        chain = TokenChain([AzureCredential(credential)], policy=Policy.APP_ONLY)
        chain.get_token([f"{idp.mcp.app_id_uri}/.default"])
        chain.close()
        keys = [open(f).read().strip() for f in glob.glob("/var/opt/azcmagent/tokens/*")]
    traced = [r for r in records if "Authorization" in r and "Basic" in r]
    leaked = [r for r in records for k in keys if k and k in r]
    print(f"traced={len(traced)} keys={len(keys)} leaked={len(leaked)}")
    sys.exit(1 if leaked or not traced or not keys else 0)
    """
)


def test_azure_arc_challenge_key_never_reaches_a_log() -> None:
    """azure-core's network trace (``logging_enable=True``) logs the Arc retry's
    ``Authorization: Basic <key>``: the machine's challenge key, which the filter let through
    (it knew ``Bearer`` only, and the key is shorter than an opaque run)."""
    try:
        os.makedirs("/var/opt/azcmagent/tokens", exist_ok=True)
    except OSError:
        pytest.skip("the Arc key folder /var/opt/azcmagent/tokens is not writable here")
    proc = subprocess.run(
        [sys.executable, "-c", _ARC_CHILD],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        check=False,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]


def test_uvicorn_trace_logger_made_after_import_is_filtered() -> None:
    """uvicorn makes ``uvicorn.asgi`` (``--log-level trace``: every ASGI scope, its query
    string with it) in ``Config.load()``, after the app imported the library: the logger had
    no filter, and a GET callback's ``code=`` reached it whole."""
    child = textwrap.dedent(
        """
        import logging
        from entra_passthrough import TokenChain
        TokenChain([]).close()
        records = []
        class Keep(logging.Handler):
            def emit(self, record):
                records.append(record.getMessage())
        asgi = logging.getLogger("uvicorn.asgi")  # as uvicorn makes it, later
        asgi.addHandler(Keep())
        asgi.setLevel(5)
        scope = {"query_string": b"code=0.AUoAsecretcode&state=s1"}
        asgi.log(5, "ASGI [1] Started scope=%s", scope)
        print(records[0])
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "0.AUoAsecretcode" not in proc.stdout
    assert "[redacted]" in proc.stdout
