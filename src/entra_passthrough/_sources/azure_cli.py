"""``AzureCli``: the developer signed in with ``az login`` (kind ``developer``)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .. import _env
from .._errors import EntraError, SourceUnavailable
from .._types import IdentityKind, TokenRequest, TokenResult
from .managed_identity import scope_to_resource

_TIMEOUT = 30.0
_SAFE = re.compile(r"^[A-Za-z0-9_.:/\-]+$")


class AzureCli:
    """The Azure CLI's signed-in account, for local development only (``kind=developer``).

    Runs ``az account get-access-token`` as an asynchronous subprocess (no thread is blocked),
    or a plain subprocess from ``get_token``. Only the ``developer`` policy ever uses it, and
    only when the request presented no assertion.

    >>> chain = TokenChain([AzureCli()], policy=Policy.DEVELOPER)
    """

    kind = IdentityKind.DEVELOPER

    def __init__(
        self,
        *,
        tenant_id: str | None = None,
        executable: str = "az",
        timeout: float = _TIMEOUT,
        name: str = "azure_cli",
    ) -> None:
        if tenant_id is not None and not _SAFE.match(tenant_id):
            from .._errors import ConfigurationError

            raise ConfigurationError("tenant_id has characters a tenant id cannot have.")
        self.name = name
        self.tenant_id = tenant_id
        self.executable = executable
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"AzureCli(name={self.name!r}, tenant_id={self.tenant_id!r})"

    def explain(self, request: TokenRequest) -> str:
        return "not applicable"

    def cache_partition(self, request: TokenRequest) -> tuple[str, ...] | None:
        return ("az", self.tenant_id or "-")

    def _argv(self, scopes: tuple[str, ...]) -> list[str]:
        resource = scope_to_resource(scopes)
        if not _SAFE.match(resource):
            raise EntraError("The scope has characters a resource cannot have.", scopes=scopes)
        path = shutil.which(self.executable)
        if path is None:
            raise SourceUnavailable(
                f"{self.executable!r} is not on PATH; install the Azure CLI and run az login.",
                source=self.name,
                scopes=scopes,
            )
        argv = [path, "account", "get-access-token", "--output", "json", "--resource", resource]
        if self.tenant_id:
            argv += ["--tenant", self.tenant_id]
        if sys.platform == "win32" and path.lower().endswith((".cmd", ".bat")):
            argv = ["cmd", "/c", *argv]
        return argv

    def _parse(
        self, returncode: int, stdout: bytes, stderr: bytes, scopes: tuple[str, ...]
    ) -> TokenResult:
        if returncode != 0:
            text = stderr.decode(errors="replace")
            code = re.search(r"AADSTS(\d+)", text)
            hint = " Run az login." if "az login" in text or "login" in text.lower() else ""
            if code:
                raise EntraError(
                    f"az account get-access-token failed.{hint}",
                    source=self.name,
                    scopes=scopes,
                    aadsts=int(code.group(1)),
                )
            raise SourceUnavailable(
                f"az account get-access-token failed (exit {returncode}).{hint}",
                source=self.name,
                scopes=scopes,
            )
        try:
            payload: dict[str, Any] = json.loads(stdout)
            token = payload["accessToken"]
            if not isinstance(token, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise SourceUnavailable(
                "az account get-access-token printed no token.", source=self.name, scopes=scopes
            ) from None
        expires_on = _expiry(payload)
        return TokenResult(token=token, expires_on=expires_on, kind=self.kind, source=self.name)

    def get_token(self, request: TokenRequest) -> TokenResult | None:
        argv = self._argv(request.scopes)
        try:
            done = subprocess.run(
                argv, capture_output=True, timeout=self.timeout, check=False, env=dict(os.environ)
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SourceUnavailable(
                f"az could not run ({type(exc).__name__}).", source=self.name, scopes=request.scopes
            ) from None
        return self._parse(done.returncode, done.stdout, done.stderr, request.scopes)

    async def get_token_async(self, request: TokenRequest) -> TokenResult | None:
        argv = self._argv(request.scopes)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise SourceUnavailable(
                f"az could not run ({type(exc).__name__}).", source=self.name, scopes=request.scopes
            ) from None
        try:
            stdout, stderr = await asyncio.wait_for(proc.communicate(), self.timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise SourceUnavailable(
                "az timed out.", source=self.name, scopes=request.scopes
            ) from None
        except BaseException:
            # Cancelled (the client went away): never leave az running behind us.
            if proc.returncode is None:
                proc.kill()
                await asyncio.shield(proc.wait())
            raise
        return self._parse(proc.returncode or 0, stdout, stderr, request.scopes)

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, *, name: str = "azure_cli"
    ) -> AzureCli:
        env = _env.environ_or(environ)
        return cls(tenant_id=_env.get(env, "ENTRA_PASSTHROUGH_AZ_TENANT_ID"), name=name)


def _expiry(payload: Mapping[str, Any]) -> float:
    # Newer az prints "expires_on" (epoch seconds); older only "expiresOn" (local time).
    epoch = payload.get("expires_on")
    if isinstance(epoch, int | float) or (isinstance(epoch, str) and epoch.isdigit()):
        return float(epoch)
    text = payload.get("expiresOn")
    if isinstance(text, str):
        try:
            return datetime.fromisoformat(text).timestamp()
        except ValueError:
            pass
    return time.time() + 300.0
