"""The Entra emulator in its OWN process, and what the scenarios need from it.

Running it out of process keeps its RS256 signing and TLS work off the measured event loop and
out of the measured process' CPU time. The scenarios talk to it only over HTTPS, as a real app
would talk to Entra; token round trips are counted by the emulator (``GET /_emulator/stats``).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2

from ._util import stop, wait_for_file_json


@dataclass(frozen=True)
class App:
    client_id: str
    secret: str | None
    app_id_uri: str


@dataclass(frozen=True)
class UserCred:
    name: str
    upn: str
    password: str


class Emulator:
    """``entra-passthrough emulator`` started as a child process with a fixed token latency."""

    def __init__(
        self, *, token_latency: float, users: int = 0, access_token_lifetime: int = 0
    ) -> None:
        self.token_latency = token_latency
        self._dir: tempfile.TemporaryDirectory[str] | None = tempfile.TemporaryDirectory(
            prefix="bench-emu-"
        )
        state_file = Path(self._dir.name) / "state.json"
        cmd = [sys.executable, "-m", "bench._emu_world", "--users", str(users)]
        if os.environ.get("BENCH_EMULATOR_CMD"):  # e.g. `entra-passthrough emulator`
            cmd = os.environ["BENCH_EMULATOR_CMD"].split()
        cmd += ["--token-latency", str(token_latency), "--state-file", str(state_file)]
        if access_token_lifetime:  # bench._emu_world only
            cmd += ["--access-token-lifetime", str(access_token_lifetime)]
        self.proc: subprocess.Popen[str] | None = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            state = wait_for_file_json(state_file, self.proc, timeout=60)
        except BaseException:
            stop(self.proc)
            raise
        self._init_state(state)

    @classmethod
    def attach(cls, state: dict[str, Any]) -> Emulator:
        """Talk to an emulator another process started (the memory child)."""
        self = cls.__new__(cls)
        self.token_latency = float(state.get("token_latency", 0.0))
        self._dir = None
        self.proc = None
        self._init_state(state)
        return self

    def detach(self) -> None:
        self._client.close()

    def _init_state(self, state: dict[str, Any]) -> None:
        self.state = state
        self.url: str = self.state["url"].rstrip("/")
        self.ca_file: str = self.state["ca_file"]
        self.tenant_id: str = self.state["tenant_id"]
        self.authority = f"{self.url}/{self.tenant_id}"
        self.token_endpoint = f"{self.authority}/oauth2/v2.0/token"
        apps = self.state["apps"]
        self.agent = self._app(apps["agent"])
        self.mcp = self._app(apps["mcp"])
        # The public client people sign in to (pre-consented for the agent's scope); user tokens
        # for the agent are what it would obtain. Falls back to the agent itself.
        self.frontend = self._app(apps["frontend"]) if "frontend" in apps else self.agent
        users = self.state["users"]
        bench = [n for n in users if n.startswith("bench-user-")]
        # distinct users when the world has them, else the default world's consented users
        names = sorted(bench, key=lambda n: int(n.rsplit("-", 1)[1])) or ["alice", "bob"]
        self.users = [
            UserCred(name=n, upn=users[n]["upn"], password=users[n]["password"]) for n in names
        ]
        self.mcp_scope = f"{self.mcp.app_id_uri}/.default"
        self._client = httpx2.Client(verify=self.ca_file, trust_env=False, timeout=60)

    @staticmethod
    def _app(d: dict[str, Any]) -> App:
        # The state file of bench._emu_world or `entra-passthrough emulator --state-file`.
        client_id = str(d["client_id"])
        return App(
            client_id=client_id,
            secret=d["secret"],
            app_id_uri=str(d["app_id_uri"] or f"api://{client_id}"),
        )

    def obo_form(self, assertion: str) -> dict[str, str]:
        """The agent's raw OBO request for the MCP scope (shared secret)."""
        return {
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "client_id": self.agent.client_id,
            "client_secret": self.agent.secret or "",
            "assertion": assertion,
            "requested_token_use": "on_behalf_of",
            "scope": self.mcp_scope,
        }

    # --- stats -----------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        r = self._client.get(f"{self.url}/_emulator/stats")
        r.raise_for_status()
        data: dict[str, Any] = r.json()
        return data

    def obo_posts(self) -> int:
        """Every POST to the token endpoint (OBO, and the refresh-token redemptions some
        credentials make instead): each is a round trip to Entra."""
        return int(self.stats().get("endpoints", {}).get("token", 0))

    # --- user assertions -------------------------------------------------------------------------
    async def mint_assertions(self, n: int) -> list[str]:
        """``n`` user tokens for the agent (aud = agent) via the password grant, one per user
        while the world has users (then cycling: distinct assertions of the same users)."""
        sem = asyncio.Semaphore(16)
        async with httpx2.AsyncClient(verify=self.ca_file, trust_env=False, timeout=60) as client:

            async def one(i: int) -> str:
                user = self.users[i % len(self.users)]
                data = {
                    "grant_type": "password",
                    "client_id": self.frontend.client_id,
                    "username": user.upn,
                    "password": user.password,
                    "scope": f"{self.agent.app_id_uri}/access_as_user",
                }
                if self.frontend.secret:
                    data["client_secret"] = self.frontend.secret
                async with sem:
                    r = await client.post(self.token_endpoint, data=data)
                if r.status_code != 200:
                    raise RuntimeError(f"password grant failed: {r.status_code} {r.text[:300]}")
                return str(r.json()["access_token"])

            tokens = await asyncio.gather(*(one(i) for i in range(n)))
        if len(set(tokens)) != len(tokens):
            raise RuntimeError("the emulator returned identical tokens: assertions must differ")
        return list(tokens)

    def close(self) -> None:
        self._client.close()
        if self.proc is not None:
            stop(self.proc)
        if self._dir is not None:
            self._dir.cleanup()

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
