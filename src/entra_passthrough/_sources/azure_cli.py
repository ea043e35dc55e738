"""``AzureCli``: the developer signed in with ``az login`` or ``azd auth login`` (kind
``developer``), through azure-identity's ``AzureCliCredential`` / ``AzureDeveloperCliCredential``.

Both paths run the same command line (azure-identity's ``COMMAND_LINE``), parse the output
with azure-identity's ``parse_token`` and raise azure-identity's texts, but own the subprocess,
in a process group of its own that a timeout or a cancellation kills whole: azure-identity's
aio ``_run_command`` leaves the CLI running when the awaiting task is cancelled (measured: the
process outlives a cancelled call by the CLI's whole run), and its sync ``process_timeout``
kills only the process it started, while ``az`` is a script whose Python child runs on (and
reports the timeout as a generic failure, and takes whole seconds: 0.9 became 0). A client
that goes away, or a call that times out, must not leave ``az`` behind.

Both CLIs sign in as the Azure CLI's first-party client ``04b07795-8ddb-461a-bbee-02f9e1bf7b46``
(azd reuses it: Azure/azure-dev ``cli/azd/pkg/auth/manager.go`` ``azdClientID``). Entra refuses
that client a token for a custom API with AADSTS65001 unless the API lists it under "authorized
client applications" (pre-authorization); the error says how to do that with ``az``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from typing import Any

from .. import _env
from .._azure_identity_seams import cli_contract
from .._checks import seconds
from .._errors import (
    GUID,
    ConfigurationError,
    EntraError,
    EntraPassthroughError,
    SourceUnavailable,
    code_in_text,
    safe_text,
)
from .._http import MAX_SECONDS
from .._jwt import JwtDecodeError, decode_unverified
from .._msal import WorkerPool
from .._types import IdentityKind, TokenRequest, TokenResult
from .managed_identity import scope_to_resource

#: The Azure CLI's client id, also used by the Azure Developer CLI.
AZURE_CLI_CLIENT_ID = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"

_TIMEOUT = 30
_SAFE = re.compile(r"^[A-Za-z0-9_.:/\-]+$")
TOOLS = ("az", "azd")

#: Where a CLI's own advice begins after Entra's text: az's recommendation (azure-cli
#: ``auth/util.py`` ``aad_error_handler``, in its wordings since 2.30) and azd's suggestion
#: (Azure/azure-dev ``pkg/auth/errors.go``, printed "Suggestion: ...").
_CLI_ADVICE = re.compile(
    r"(?mi)^[ \t]*(?:Run the command below to authenticate|Interactive authentication is "
    r"needed|To re-authenticate, please|Please explicitly log in with|Suggestion:)"
)
#: Entra's codes for multi-factor authentication the CLI's sign-in did not perform: 50076 MFA
#: required by Conditional Access, 50079 MFA registration required, 50074 strong authentication
#: required (https://learn.microsoft.com/entra/identity-platform/reference-error-codes).
_MFA_CODES = frozenset({50074, 50076, 50079})
#: Microsoft Graph's application id and App ID URI: a Graph token carries either as its
#: ``aud`` (v2 / v1), so a Graph token is told apart from a token of a resource named by either.
_GRAPH = ("00000003-0000-0000-c000-000000000000", "https://graph.microsoft.com")
#: Azure Resource Manager's two App ID URIs per cloud, one resource: az asked for one may print
#: a token for the other (Cloud Shell answers ``management.azure.com`` with
#: ``management.core.windows.net/``, Azure/azure-cli#29313), and ARM accepts both.
_SAME_URIS = (
    frozenset({"https://management.azure.com", "https://management.core.windows.net"}),
    frozenset(
        {"https://management.usgovcloudapi.net", "https://management.core.usgovcloudapi.net"}
    ),
    frozenset({"https://management.chinacloudapi.cn", "https://management.core.chinacloudapi.cn"}),
)
#: AADSTS53003: a Conditional Access policy blocks the token (no sign-in meets it).
_BLOCKED = 53003

#: The CLI runs in a process group of its own, killed whole on timeout or cancel: ``az`` is a
#: shell script that runs Python as its child, and that child keeps the output pipes open (and
#: runs on) when only the script is killed (measured: a timed-out call waited for the child's
#: whole run instead of its timeout).
_GROUP: dict[str, Any] = {} if sys.platform == "win32" else {"start_new_session": True}


#: How long a killed CLI's output pipes are drained before they are closed at our end. The kill
#: closes them at once unless a process the CLI started left its group (``setsid``, a daemon)
#: and holds them: that process may run for ever, and the call must not wait for it.
_DRAIN = 1.0


def _kill_group(pid: int, kill: Callable[[], object]) -> None:
    """Kill the CLI and every process it started (its group; on Windows the process)."""
    with contextlib.suppress(ProcessLookupError):  # already gone
        if sys.platform == "win32":
            kill()
        else:
            os.killpg(pid, signal.SIGKILL)  # the group's id is the CLI's pid


def _stop_sync(proc: subprocess.Popen[bytes]) -> None:
    """Kill the CLI's group and reap the CLI without waiting for a process that escaped the
    group and holds its output pipes: a short drain, then our read ends closed."""
    _kill_group(proc.pid, proc.kill)
    try:
        proc.communicate(timeout=_DRAIN)
    except subprocess.TimeoutExpired:
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
        proc.wait()  # the CLI itself was killed: it is gone at once


class _Run(asyncio.SubprocessProtocol):
    """The CLI's output, its exit (``exited``), and the end of the run (``finished``: exited
    and both output pipes closed, what ``communicate`` waits for). A process the CLI started
    that left its group may hold the pipes open for ever: a timeout or a cancel then closes the
    transport (our ends of the pipes) instead of waiting for it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.exited: asyncio.Future[None] = loop.create_future()
        self.finished: asyncio.Future[None] = loop.create_future()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        (self.out if fd == 1 else self.err).extend(data)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            self.finished.set_result(None)


def preauthorize_fix(scopes: tuple[str, ...], *, tool: str = "az") -> str:
    """How to pre-authorize the Azure CLI's client on the API named by ``scopes``."""
    api = next(iter(GUID.findall(" ".join(scopes))), "<api-app-client-id>")
    login = "az login" if tool == "az" else "azd auth login"
    return (
        f"the API must pre-authorize the Azure CLI's client {AZURE_CLI_CLIENT_ID} (used by az "
        "and azd) for its scope: in the portal, App registrations > the API > Expose an API > "
        "Add a client application; or with az: "
        f'SCOPE_IDS=$(az ad app show --id {api} --query "api.oauth2PermissionScopes[].id" '
        f"-o json | tr -d ' \\n'); az ad app update --id {api} --add "
        f'api.preAuthorizedApplications "{{\\"appId\\":\\"{AZURE_CLI_CLIENT_ID}\\",'
        f'\\"delegatedPermissionIds\\":$SCOPE_IDS}}" (every scope of the API; --add keeps the '
        f"clients already pre-authorized; scripts/tenant-setup.sh does it); then {login} again. "
        "Alternatively use OnBehalfOf with your own app registration."
    )


def _identifiers(value: str) -> tuple[set[str], set[str]]:
    """``(URIs, client ids)`` a resource or an ``aud`` names, lower case, no trailing slash:
    ``api://<client id>`` names both; Microsoft Graph's URI and client id name each other."""
    name = value.strip().lower().rstrip("/")
    uris: set[str] = set()
    ids: set[str] = set()
    if GUID.fullmatch(name):
        ids.add(name)
    else:
        uris.add(name)
        rest = name.removeprefix("api://")
        if rest != name and GUID.fullmatch(rest):
            ids.add(rest)
    if name in _GRAPH:
        ids.add(_GRAPH[0])
        uris.add(_GRAPH[1])
    for same in _SAME_URIS:
        if name in same:
            uris |= same
    return uris, ids


def _same_resource(aud: str, resource: str) -> bool:
    """Whether a token whose ``aud`` is ``aud`` can be a token for ``resource``: false only
    when it cannot (a URI that is not the resource's, a client id the request names another
    of); a client id ``aud`` for a resource named by a URI alone cannot be decided."""
    aud_uris, aud_ids = _identifiers(aud)
    uris, ids = _identifiers(resource)
    if aud_uris & uris or aud_ids & ids:
        return True
    # A URI aud is a v1 token's, the URI the request named: another URI is another resource.
    # A client id aud (v2, or v1 asked by client id) is decided when the request names one.
    return not (aud_uris and uris) and not (aud_ids and ids)


def _printed_tenant(out: str) -> object:
    """The ``tenant`` field of az's JSON (the tenant of the token), when the token itself
    cannot be read."""
    try:
        data = json.loads(out)
    except ValueError:
        return None
    return data.get("tenant") if isinstance(data, dict) else None


class AzureCli:
    """The Azure CLI's (``tool="az"``) or the Azure Developer CLI's (``tool="azd"``) signed-in
    account, for local development only (``kind=developer``).

    Tokens come from the CLI's command line as azure-identity's ``AzureCliCredential`` /
    ``AzureDeveloperCliCredential`` run it (their error texts are kept), in a subprocess this
    source owns: a timeout or a cancelled call kills the CLI with everything it started (its
    process group), and does not wait for a process that left the group (a session of its own)
    and still holds the CLI's output. Only
    the ``developer`` policy ever uses it, and only when the request presented no assertion.

    >>> chain = TokenChain([AzureCli()], policy=Policy.DEVELOPER)
    >>> chain = TokenChain([AzureCli(tool="azd")], policy=Policy.DEVELOPER)  # azd auth login
    """

    kind = IdentityKind.DEVELOPER

    def __init__(
        self,
        *,
        tool: str = "az",
        tenant_id: str | None = None,
        executable: str | None = None,
        timeout: float = _TIMEOUT,
        max_workers: int = 2,
        name: str | None = None,
    ) -> None:
        if tool not in TOOLS:
            raise ConfigurationError(
                f"AzureCli(tool={tool!r}) is not a developer CLI.",
                fix="use tool='az' (az login) or tool='azd' (azd auth login).",
            )
        if tenant_id is not None and not (isinstance(tenant_id, str) and _SAFE.match(tenant_id)):
            # A number or bytes was a bare TypeError from the pattern.
            given = (
                "characters a tenant id cannot have"
                if isinstance(tenant_id, str)
                else f"{type(tenant_id).__name__} given"
            )
            raise ConfigurationError(
                f"AzureCli(tenant_id=) must be a tenant id as a string ({given}).",
                fix="set tenant_id= (ENTRA_PASSTHROUGH_AZ_TENANT_ID) to the Directory (tenant) "
                "ID, a GUID (az account show --query tenantId), or leave it out for the CLI's "
                "signed-in tenant.",
            )
        self.tool = tool
        self.name = name or ("azure_cli" if tool == "az" else "azure_developer_cli")
        self.tenant_id = tenant_id
        #: The program run; default: ``tool`` found on PATH, as azure-identity looks it up.
        self.executable = executable or tool
        # NaN or -1 was taken and every call then timed out at once; "30" failed at the
        # first call. The subprocess is killed when it runs out.
        self.timeout = seconds(timeout, what="timeout", low=0, high=MAX_SECONDS, above_low=True)
        self._pool = WorkerPool(max_workers=max_workers, name=f"entra-{self.name}")

    def __repr__(self) -> str:
        return f"AzureCli(name={self.name!r}, tool={self.tool}, tenant_id={self.tenant_id!r})"

    def close(self) -> None:
        self._pool.close()

    def explain(self, request: TokenRequest) -> str:
        return "not applicable"

    def cache_partition(self, request: TokenRequest) -> tuple[str, ...] | None:
        return (self.tool, self.tenant_id or "-")

    # -- sync: azure-identity's credential ------------------------------------------------

    def _scope(self, scopes: tuple[str, ...]) -> str:
        resource = scope_to_resource(scopes)  # one resource, as both CLIs require
        if not _SAFE.match(resource):
            raise EntraError("The scope has characters a resource cannot have.", scopes=scopes)
        return f"{resource}/.default"

    def get_token(self, request: TokenRequest) -> TokenResult | None:
        scope = self._scope(request.scopes)
        return self._run_sync(scope, request.scopes)

    def _run_sync(self, scope: str, scopes: tuple[str, ...]) -> TokenResult:
        argv = self._argv(scope, scopes)
        try:
            with subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._env(),
                **_GROUP,
            ) as proc:
                try:
                    stdout, stderr = proc.communicate(timeout=self.timeout)
                except BaseException:
                    _stop_sync(proc)
                    raise
        except subprocess.TimeoutExpired:
            raise self._timed_out(scopes) from None
        except OSError as exc:
            raise SourceUnavailable(
                f"{self.tool} could not run ({type(exc).__name__}).",
                source=self.name,
                scopes=scopes,
            ) from None
        return self._parse(proc.returncode, stdout, stderr, scopes)

    # -- async: the same command, our subprocess --------------------------------------------

    def _argv(self, scope: str, scopes: tuple[str, ...]) -> list[str]:
        command_line = cli_contract(self.tool).command_line
        if self.tool == "az":
            args = [*command_line, "--resource", scope.removesuffix("/.default")]
            if self.tenant_id:
                args += ["--tenant", self.tenant_id]
        else:
            args = [*command_line, "--scope", scope]
            if self.tenant_id:
                args += ["--tenant-id", self.tenant_id]
        path = shutil.which(self.executable)
        if path is None:
            raise SourceUnavailable(
                cli_contract(self.tool).not_found, source=self.name, scopes=scopes
            )
        argv = [path, *args]
        if sys.platform == "win32" and path.lower().endswith((".cmd", ".bat")):
            argv = ["cmd", "/c", *argv]
        return argv

    def _env(self) -> dict[str, str]:
        return dict(os.environ, AZURE_CORE_NO_COLOR="true", NO_COLOR="true")

    def _parse(
        self, returncode: int, stdout: bytes, stderr: bytes, scopes: tuple[str, ...]
    ) -> TokenResult:
        out = stdout.decode(errors="replace")
        err = stderr.decode(errors="replace")
        cli = cli_contract(self.tool)
        if returncode == 0:
            try:
                # azure-identity's parser indexes what json.loads returned: JSON that is not an
                # object ([], null, "x") is a TypeError, an expiry of 1e400 an OverflowError.
                info = cli.parse_token(out)
                expires_on = float(info.expires_on) if info is not None else None
            except (TypeError, ValueError, KeyError, AttributeError, OverflowError):
                info = expires_on = None
            if info is None or expires_on is None:
                command = self._command()
                raise SourceUnavailable(
                    f"{self.tool} printed no token (its output is not the JSON object with a "
                    "token and its expiry that it prints when it works).",
                    source=self.name,
                    scopes=scopes,
                    fix=f"run '{command}' on this host: it must print a JSON object with the "
                    f"token; update {self.tool} if it prints anything else, and check that no "
                    f"wrapper script named {self.tool} comes first on PATH.",
                )
            self._check_issued(info.token, out, scopes)
            return TokenResult(
                token=info.token,
                expires_on=expires_on,
                kind=self.kind,
                source=self.name,
            )
        combined = f"{out}\n{err}"
        if returncode == 127:
            raise SourceUnavailable(cli.not_found, source=self.name, scopes=scopes)
        logged_out = (
            ("az login" in combined or "az account set" in combined)
            if self.tool == "az"
            else "azd auth login" in combined
        )
        if logged_out and "AADSTS" not in combined:
            raise SourceUnavailable(cli.not_logged_in, source=self.name, scopes=scopes)
        text = cli.sanitize_output(err or out)
        if not text.strip():
            # Nothing from Entra to decode: the CLI crashed or was killed (out of memory, a
            # signal), which says nothing about the account or the scope.
            how = (
                f"was killed by signal {-returncode}"
                if returncode < 0
                else f"exited with status {returncode}"
            )
            raise SourceUnavailable(
                f"{self.tool} {how} and printed nothing.",
                source=self.name,
                scopes=scopes,
                fix=f"run '{self._command()}' by hand on this host to see why it fails (a "
                f"crash, or the process killed: out of memory?); reinstall or update {self.tool} "
                "if it fails there too.",
            )
        if code_in_text(text) is None and (returncode < 0 or "AADSTS" not in text):
            # No answer from Entra in it (a network error, a crash, the CLI killed after it
            # printed part of its output): not Entra's refusal, said as the CLI's failure.
            how = (
                f"was killed by signal {-returncode}"
                if returncode < 0
                else f"exited with status {returncode}"
            )
            raise SourceUnavailable(
                f"{self.tool} {how} without a token and without an answer from Entra: "
                f"{safe_text(text, limit=300)}",
                source=self.name,
                scopes=scopes,
                fix=f"run '{self._command()}' by hand on this host to see why it fails (the "
                "network or a proxy on the way to Entra, the CLI's installation); reinstall or "
                f"update {self.tool} if it fails there too.",
            )
        raise self._entra_error(text, scopes)

    # -- the token printed: for the resource and the tenant asked for ---------------------

    def _check_issued(self, token: str, out: str, scopes: tuple[str, ...]) -> None:
        """Refuse a token the CLI printed for another resource or tenant (a wrapper script, a
        mix-up of accounts): it would be cached and sent as this resource's. Decided where it
        can be (the token unverified: the CLI is trusted for what it says, not for what it was
        asked): a v1 token's ``aud`` is the resource URI or client id as requested, a v2
        token's always the resource's client id (access-token-claims-reference, "aud"), so a
        URI ``aud`` must be the resource asked for, and a client id ``aud`` must be the one
        the request names (``api://<client id>``, the bare client id) when it names one. An
        undecodable (opaque, encrypted) token, or a client id ``aud`` for a resource named
        only by its URI, cannot be decided and is served as before."""
        try:
            claims: dict[str, Any] | None = decode_unverified(token)
        except JwtDecodeError:
            claims = None
        resource = self._resource_name(scopes)
        aud = claims.get("aud") if claims is not None else None
        if isinstance(aud, str) and not _same_resource(aud, resource):
            shown = aud if len(aud) <= 200 and _SAFE.match(aud) else "another resource"
            raise SourceUnavailable(
                f"{self.tool} printed a token for another resource ({shown}, not {resource}); "
                "it was not used.",
                source=self.name,
                scopes=scopes,
                fix=f"run '{self._command()}' for {resource} by hand: the token's aud must be "
                f"that resource; check that no wrapper script named {self.tool} comes first on "
                f"PATH, and sign in for the resource: '{self._login_scope(scopes)}'.",
            )
        wanted = self.tenant_id
        if wanted is None or not GUID.fullmatch(wanted):
            return  # the CLI's own tenant, or a domain name: nothing to compare a tid with
        tid = claims.get("tid") if claims is not None else _printed_tenant(out)
        if isinstance(tid, str) and GUID.fullmatch(tid) and tid.lower() != wanted.lower():
            login = (
                f"az login --tenant {wanted}"
                if self.tool == "az"
                else f"azd auth login --tenant-id {wanted}"
            )
            raise SourceUnavailable(
                f"{self.tool} printed a token of another tenant ({tid}, not {wanted}: "
                "tenant_id= / ENTRA_PASSTHROUGH_AZ_TENANT_ID); it was not used.",
                source=self.name,
                scopes=scopes,
                fix=f"sign in to that tenant ('{login}'), or set ENTRA_PASSTHROUGH_AZ_TENANT_ID "
                "(tenant_id=) to the tenant you signed in to.",
            )

    def _timed_out(self, scopes: tuple[str, ...]) -> SourceUnavailable:
        """The CLI did not answer within ``timeout`` (it was stopped, with what it started)."""
        return SourceUnavailable(
            f"{self.tool} did not answer within {self.timeout:g} s (timeout=) and was stopped.",
            source=self.name,
            scopes=scopes,
            fix=f"run '{self._command()}' by hand on this host: if it waits for input (a "
            "prompt, a browser sign-in), sign in first; if it is only slow (a first run, a slow "
            f"network or proxy), pass a larger timeout= to {type(self).__name__}.",
        )

    def _command(self) -> str:
        """The command line a user runs by hand to see what this source runs."""
        if self.tool == "az":
            return "az account get-access-token --output json"
        return "azd auth token --output json"

    async def get_token_async(self, request: TokenRequest) -> TokenResult | None:
        scope = self._scope(request.scopes)
        argv = self._argv(scope, request.scopes)
        loop = asyncio.get_running_loop()
        run = _Run(loop)
        try:
            # Not ``create_subprocess_exec``: its ``Process`` waits for the output pipes to
            # close even after the CLI was killed, and has no public way to close them.
            transport, _ = await loop.subprocess_exec(
                lambda: run,
                *argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._env(),
                **_GROUP,
            )
        except OSError as exc:
            raise SourceUnavailable(
                f"{self.tool} could not run ({type(exc).__name__}).",
                source=self.name,
                scopes=request.scopes,
            ) from None
        try:
            try:
                # Not ``asyncio.wait_for``: on Python 3.11 it returns the output when a cancel
                # lands as the CLI ends (python/cpython#86296), and the cancelled request ran on.
                async with asyncio.timeout(self.timeout):
                    await asyncio.shield(run.finished)
            except TimeoutError:
                if not run.finished.done():  # not when it ended as the time ran out
                    await self._stop_async(transport, run)
                raise self._timed_out(request.scopes) from None
            except BaseException:
                # Cancelled (the client went away): never leave the CLI running behind us.
                if not run.finished.done():
                    await self._stop_async(transport, run)
                raise
        finally:
            transport.close()  # our ends of the pipes, whoever else holds them
            if not run.finished.done() and transport.get_returncode() is not None:
                # The ends close on the loop's next turns: closed when the call ends, not left
                # to a loop that may stop first.
                await asyncio.shield(run.finished)
        return self._parse(
            transport.get_returncode() or 0, bytes(run.out), bytes(run.err), request.scopes
        )

    @staticmethod
    async def _stop_async(transport: asyncio.SubprocessTransport, run: _Run) -> None:
        """Kill the CLI's group and wait for the CLI's exit (it was killed: at once), not for
        the pipes a process that left the group may hold: the caller closes the transport.
        Waited for before the close, which would otherwise kill and reap the CLI itself (past
        asyncio's child watcher)."""
        _kill_group(transport.get_pid(), transport.kill)
        if transport.get_returncode() is None:
            await asyncio.shield(run.exited)

    # -- errors ------------------------------------------------------------------------------

    def _entra_error(self, text: str, scopes: tuple[str, ...]) -> EntraError:
        code = code_in_text(text)
        # Entra's answer, and after it the CLI's own advice ("Run the command below ...: az
        # logout / az login ...", azd's "Suggestion: ..."), each bounded on its own so that
        # neither is cut in the middle by the other.
        advice_at = _CLI_ADVICE.search(text)
        entra = text[: advice_at.start()] if advice_at else text
        advice = text[advice_at.start() :] if advice_at else ""
        fix = None
        if code == 65001 and AZURE_CLI_CLIENT_ID in text:
            fix = preauthorize_fix(scopes, tool=self.tool)
        elif code == 50020:
            # The table's fix (make the app multi-tenant, ENTRA_PASSTHROUGH_ALLOWED_TENANTS) is
            # for an app of the user's own: the CLI's client is Microsoft's, and the CLI signs
            # in to the tenant it is asked for.
            fix = self._other_tenant_fix()
        elif code in _MFA_CODES:
            # The table's fix (hand the claims challenge back to the client) is on-behalf-of's:
            # here the developer signs in to the CLI again, for this resource, with MFA.
            fix = self._mfa_fix(scopes, enrol=code == 50079)
        elif code == _BLOCKED:
            fix = self._blocked_fix(scopes)
        message = f"{self.tool} could not get a token: {safe_text(entra)}"
        if advice and fix is None:
            # No fix of ours for the CLI: its own advice is the next step (bounded, whole).
            message += f" {self.tool} says: {safe_text(advice, limit=300)}"
        return EntraError(
            # The CLI's own text (its stderr): redacted and bounded, it may echo anything.
            message,
            source=self.name,
            scopes=scopes,
            aadsts=code,
            fix=fix,
        )

    def _login_scope(self, scopes: tuple[str, ...]) -> str:
        """The CLI's sign-in command for the resource of ``scopes`` (and this source's tenant):
        the sign-in that meets the resource's Conditional Access policy (az login --scope:
        Azure/azure-cli#17778, "for Conditional Access MFA support")."""
        try:
            scope = self._scope(scopes)
        except EntraPassthroughError:
            scope = "<resource>/.default"
        if self.tool == "az":
            tenant = f" --tenant {self.tenant_id}" if self.tenant_id else ""
            return f"az login{tenant} --scope {scope}"
        tenant = f" --tenant-id {self.tenant_id}" if self.tenant_id else ""
        return f"azd auth login{tenant} --scope {scope}"

    def _mfa_fix(self, scopes: tuple[str, ...], *, enrol: bool) -> str:
        """AADSTS50076/50079/50074 from the CLI: the resource requires MFA, and the CLI's
        sign-in did not perform it."""
        enrolment = " (registering a method when asked)" if enrol else ""
        return (
            f"Entra requires multi-factor authentication for {self._resource_name(scopes)} and "
            f"the {self.tool} sign-in did not perform it: run '{self._login_scope(scopes)}' to "
            f"sign in for that resource with MFA{enrolment}, then retry"
        )

    def _blocked_fix(self, scopes: tuple[str, ...]) -> str:
        """AADSTS53003 from the CLI: a Conditional Access policy blocks the token."""
        return (
            f"a Conditional Access policy blocks this sign-in to {self._resource_name(scopes)}, "
            "and signing in again does not help: ask your tenant administrator which policy "
            "applies (the sign-in logs show it, by the correlation id), or sign in from a device "
            "or network it allows (e.g. a compliant device)"
        )

    def _resource_name(self, scopes: tuple[str, ...]) -> str:
        try:
            return self._scope(scopes).removesuffix("/.default")
        except EntraPassthroughError:
            return "the resource"

    def _other_tenant_fix(self) -> str:
        """AADSTS50020 from the CLI: the signed-in account is not in the tenant asked for."""
        tenant = self.tenant_id or "<tenant id>"
        login = (
            f"az login --tenant {tenant}"
            if self.tool == "az"
            else f"azd auth login --tenant-id {tenant}"
        )
        where = (
            f"the tenant this source asks for ({self.tenant_id}: tenant_id= / "
            "ENTRA_PASSTHROUGH_AZ_TENANT_ID)"
            if self.tenant_id
            else "the tenant the CLI asked for (its default)"
        )
        return (
            f"the account signed in to {self.tool} is not a member or guest of {where}: sign in "
            f"with an account of that tenant ({login}), have the account invited there as a "
            "guest, or set ENTRA_PASSTHROUGH_AZ_TENANT_ID (tenant_id=) to a tenant the account "
            "is in (unset: the CLI's own default)"
        )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, name: str | None = None
    ) -> AzureCli:
        """``ENTRA_PASSTHROUGH_DEVELOPER_CLI`` (``az`` or ``azd``) and
        ``ENTRA_PASSTHROUGH_AZ_TENANT_ID``."""
        env = _env.environ_or(environ)
        tool = (_env.get(env, "ENTRA_PASSTHROUGH_DEVELOPER_CLI") or "az").lower()
        if tool not in TOOLS:
            raise ConfigurationError(  # not the value: it may be a secret in the wrong variable
                "ENTRA_PASSTHROUGH_DEVELOPER_CLI is not a developer CLI.",
                fix="set it to az (az login) or azd (azd auth login), or unset it (az).",
            )
        return cls(tool=tool, tenant_id=_env.get(env, "ENTRA_PASSTHROUGH_AZ_TENANT_ID"), name=name)
