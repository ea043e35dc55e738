"""The standalone broker behind a TLS-terminating front end (Container Apps / App Service
ingress): ``entra-passthrough broker`` run as a process, plain HTTP on 0.0.0.0, the front end's
addresses named in ``ENTRA_PASSTHROUGH_CONSENT_FORWARDED_ALLOW_IPS`` (or the config's
``forwarded_allow_ips``). The test client stands for the front end: it connects from 127.0.0.1
with ``X-Forwarded-Proto: https``. The sign-in runs against the emulator end to end: start,
authorize, the form-post callback, sign-out."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2

from _support.consent import ConsentEnv, consent_link, form_post_fields, platform_caller
from entra_passthrough._sources.delegated import DelegatedConsent
from entra_passthrough._store import Keyring, MemoryStore

KEYS = "fe1:" + base64.urlsafe_b64encode(bytes(range(32))).decode()
FORWARDED_ENV = "ENTRA_PASSTHROUGH_CONSENT_FORWARDED_ALLOW_IPS"
#: What the front end adds to every request it passes on.
PROXIED = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.7"}
JSON = {"Accept": "application/json"}
_RUNNING = re.compile(r"Uvicorn running on http://0\.0\.0\.0:(\d+)")


@contextmanager
def broker_process(
    env: ConsentEnv,
    tmp: Path,
    *,
    forwarded: str | None,
    config_forwarded: object = None,
    extra_env: dict[str, str] | None = None,
) -> Iterator[tuple[str, Path]]:
    """``python -m entra_passthrough broker --host 0.0.0.0 --port 0`` with no certificate; yields
    its loopback URL and the file its access log goes to."""
    config = {
        "client_id": env.app.client_id,
        "tenant_id": env.idp.tenant_id,
        "authority_host": env.idp.url,
        "redirect_uris": [env.redirect_uri],
        "allowed_tenants": [env.idp.tenant_id],
        "ca_file": env.idp.ca_file,
    }
    if config_forwarded is not None:
        config["forwarded_allow_ips"] = config_forwarded
    (tmp / "broker.json").write_text(json.dumps(config))
    environ = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ENTRA_PASSTHROUGH_", "AZURE_", "IDENTITY_", "MSI_"))
        and k != "FORWARDED_ALLOW_IPS"
    }
    environ.update(
        PYTHONUNBUFFERED="1",
        ENTRA_PASSTHROUGH_CONSENT_KEYS=KEYS,
        ENTRA_PASSTHROUGH_CONSENT_CLIENT_SECRET=env.app.secret,
    )
    if forwarded is not None:
        environ[FORWARDED_ENV] = forwarded
    environ.update(extra_env or {})
    out, err = tmp / "stdout.log", tmp / "stderr.log"
    argv = [sys.executable, "-m", "entra_passthrough", "broker", "--config"]
    argv += [str(tmp / "broker.json"), "--host", "0.0.0.0", "--port", "0"]
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(argv, stdout=stdout, stderr=stderr, env=environ)
    try:
        port = None
        for _ in range(1200):  # bounded: 60 s
            found = _RUNNING.search(err.read_text(errors="replace"))
            if found:
                port = int(found.group(1))
                break
            try:
                proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                continue
            break  # it exited
        assert port is not None, f"the broker did not start: {err.read_text(errors='replace')}"
        yield f"http://127.0.0.1:{port}", out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hung shutdown
            proc.kill()
            proc.wait(timeout=15)


async def _ticket(env: ConsentEnv, user_id: str) -> str:
    """A sign-in link ticket for alice, sealed with the broker's keyring as an agent would."""
    source = DelegatedConsent(
        client_id=env.app.client_id,
        tenant_id=env.idp.tenant_id,
        client_secret=env.app.secret,
        store=MemoryStore(),
        keyring=Keyring.from_env("K", environ={"K": KEYS}),
        broker_url="https://consent.contoso.test",
        authority_host=env.idp.url,
        http_client=env.idp.msal_http_client(),
        server_label="mcp",
    )
    try:
        link = await consent_link(
            source, env, platform_caller(user_id, upn=env.idp.users["alice"].upn)
        )
    finally:
        source.close()
    return urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)["t"][0]


def _origin(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _cookie(set_cookie: str) -> tuple[str, str, set[str]]:
    pair, *attributes = (part.strip() for part in set_cookie.split(";"))
    name, value = pair.split("=", 1)
    return name, value, {a.lower() for a in attributes}


async def test_plain_http_on_all_interfaces_behind_a_named_front_end(
    consent_env: ConsentEnv, tmp_path: Path
) -> None:
    """Through the trusted front end, the sign-in works end to end and stays what it is over
    HTTPS: the public https redirect URI, a ``__Host-`` ``Secure`` binding cookie, the callback's
    Origin check naming the identity provider, the page's CSP, sign-out checked against the
    public origin (the front end passes on another Host). The client address is the one the
    front end reports."""
    env = consent_env
    ticket = await _ticket(env, "front-end-user-1")
    with broker_process(env, tmp_path, forwarded="127.0.0.1") as (base, access_log):
        async with httpx2.AsyncClient(timeout=30) as front_end, env.browser() as browser:
            start = await front_end.get(f"{base}/start", params={"t": ticket}, headers=PROXIED)
            assert start.status_code == 302, start.text
            location = start.headers["location"]
            assert location.startswith(env.idp.url + "/")
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
            assert query["redirect_uri"] == [env.redirect_uri]
            assert env.redirect_uri.startswith("https://")
            name, value, attributes = _cookie(start.headers["set-cookie"])
            assert name.startswith("__Host-epc-")
            assert {"secure", "httponly", "samesite=none", "path=/"} <= attributes
            assert not any(a.startswith("domain=") for a in attributes)

            # The user's browser signs in at the identity provider, whose page posts the
            # answer to the public callback; the front end passes it on.
            authorize = await browser.get(location, follow_redirects=False)
            action, fields = form_post_fields(authorize)
            assert action == env.redirect_uri
            cookie = {"Cookie": f"{name}={value}"}
            elsewhere = await front_end.post(
                f"{base}/callback",
                data=fields,
                headers={**PROXIED, **cookie, **JSON, "Origin": "https://evil.example"},
            )
            assert elsewhere.status_code == 400
            assert elsewhere.json()["error"] == "cross_site_callback"
            page = await front_end.post(
                f"{base}/callback",
                data=fields,
                headers={**PROXIED, **cookie, "Origin": _origin(env.idp.url)},
            )
            assert page.status_code == 200, page.text
            assert "You are signed in" in page.text
            csp = page.headers["content-security-policy"]
            assert f"form-action 'self' {_origin(env.idp.url)};" in csp
            assert "frame-ancestors 'none'" in csp
            cleared = _cookie(page.headers["set-cookie"])
            assert cleared[0] == name
            assert "secure" in cleared[2]

            # Sign-out: the form posts from the public origin; the front end's hop carries
            # the container's own Host (127.0.0.1:<broker port>).
            revoke_t = re.search(r'name="t" value="([^"]+)"', page.text)
            assert revoke_t is not None
            form = {"t": revoke_t.group(1)}
            same_origin = {**PROXIED, **JSON, "Sec-Fetch-Site": "same-origin"}
            csrf = await front_end.post(
                f"{base}/revoke",
                data=form,
                headers={**same_origin, "Origin": "https://evil.example"},
            )
            assert csrf.status_code == 400
            assert csrf.json()["error"] == "csrf"
            revoked = await front_end.post(
                f"{base}/revoke", data=form, headers={**same_origin, "Origin": _origin(action)}
            )
            assert revoked.status_code == 200, revoked.text
            assert revoked.json() == {"status": "ok", "revoked": True}

            # The front end's own hop without the header, or a client that reached it over
            # plain HTTP: refused, nothing started.
            for headers in ({}, {**PROXIED, "X-Forwarded-Proto": "http"}):
                plain = await front_end.get(
                    f"{base}/start", params={"t": ticket}, headers={**headers, **JSON}
                )
                assert plain.status_code == 403
                assert plain.json()["error"] == "https_required"
                assert "set-cookie" not in plain.headers
    log = access_log.read_text(errors="replace")
    assert '203.0.113.7:0 - "GET /start?' in log
    assert '203.0.113.7:0 - "POST /callback HTTP/1.1" 200' in log


async def test_forwarded_headers_from_an_untrusted_peer_are_ignored(
    consent_env: ConsentEnv, tmp_path: Path
) -> None:
    """The same headers from a peer that is not a named front end (here 127.0.0.1, when the
    front end is 192.0.2.10 or in 10.0.0.0/8): the request counts as the plain HTTP it is and
    is refused; the client address it claims is not believed. Also named in the config."""
    env = consent_env
    ticket = await _ticket(env, "front-end-user-2")
    for n, (forwarded, in_config) in enumerate(
        [("192.0.2.10, 10.0.0.0/8", None), (None, ["192.0.2.10"])]
    ):
        tmp = tmp_path / str(n)
        tmp.mkdir()
        with broker_process(env, tmp, forwarded=forwarded, config_forwarded=in_config) as (
            base,
            access_log,
        ):
            async with httpx2.AsyncClient(timeout=30) as peer:
                start = await peer.get(
                    f"{base}/start", params={"t": ticket}, headers={**PROXIED, **JSON}
                )
                assert start.status_code == 403
                assert start.json()["error"] == "https_required"
                assert "location" not in start.headers
                assert "set-cookie" not in start.headers
                assert start.headers["cache-control"] == "no-store"
        log = access_log.read_text(errors="replace")
        assert "203.0.113.7" not in log
        assert "127.0.0.1:" in log


async def test_the_broker_runs_where_the_host_sets_web_concurrency(
    consent_env: ConsentEnv, tmp_path: Path
) -> None:
    """Some hosts set ``WEB_CONCURRENCY``; uvicorn takes it as a worker count when none is given
    and exits for more than one with an app object. The broker is one process per replica."""
    env = consent_env
    ticket = await _ticket(env, "web-concurrency-user")
    with broker_process(
        env, tmp_path, forwarded="127.0.0.1", extra_env={"WEB_CONCURRENCY": "4"}
    ) as (base, _):
        async with httpx2.AsyncClient(timeout=30) as front_end:
            start = await front_end.get(f"{base}/start", params={"t": ticket}, headers=PROXIED)
    assert start.status_code == 302, start.text
