"""The fault suite: what callers get when Entra, the JWKS, the identity endpoint or the CLI fail.

``python -m bench._faults [--quick] [--out DIR]`` runs every fault against the public API (real
MSAL, the emulator over HTTPS in this process, its fault injection), and writes ``faults.json``
and ``faults.md`` to ``bench/results/`` (quick: ``bench/results/quick/``).

Per fault: the calls made, the outcomes by type, the POSTs the emulator saw, app-identity
fallbacks (a user's call answered with the app's identity: must be 0), and tokens logged (every
token the emulator issued, any 35-character piece of it searched for in every log record at
DEBUG of every logger: must be 0). The chain under test is
``TokenChain([OnBehalfOf, <an app source>], policy=USER_OR_APP)``: the most permissive policy
that still names a user, so a fallback would show. The MCP server faults (restarted, slow,
401/403/404, -32000) run ``entra_mcp_tool`` against a real MCP server (tests/faults/_mcp.py):
also counted there, the tools that never served again (connections lost for good) and the calls
the server ran twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import stat
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from entra_passthrough import (
    AzureCli,
    IdentityKind,
    JwtVerifier,
    ManagedIdentity,
    OnBehalfOf,
    Policy,
    Timeouts,
    TokenChain,
    TokenRequest,
    TokenResult,
    bind_caller,
)
from entra_passthrough._http import SHARED_THROTTLE
from entra_passthrough.testing import EntraEmulator

from ._util import machine

RESULTS = Path(__file__).resolve().parent / "results"

#: Short limits so that a stalled endpoint costs the suite about a second per fault.
SUITE_TIMEOUTS = Timeouts(
    connect=1.0, read=1.0, deadline=3.0, retries=2, backoff=0.02, max_backoff=0.05
)


class AppIdentity:
    """An app source that always answers: any result of it for a user's call is a fallback."""

    name = "app"
    kind = IdentityKind.APP

    def cache_partition(self, request: TokenRequest) -> tuple[str, ...] | None:
        return ("app",)

    def get_token(self, request: TokenRequest) -> TokenResult | None:
        return TokenResult(
            token="app-token", expires_on=time.time() + 3600, kind=self.kind, source=self.name
        )

    async def get_token_async(self, request: TokenRequest) -> TokenResult | None:
        return self.get_token(request)


class LogTrap(logging.Handler):
    """Every record of every logger, at DEBUG, formatted with its arguments and traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:
            self.lines.append(f"{record.name} unformattable record")

    def __enter__(self) -> LogTrap:
        root = logging.getLogger()
        self._level = root.level
        root.addHandler(self)
        root.setLevel(logging.DEBUG)
        return self

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        root.removeHandler(self)
        root.setLevel(self._level)


#: Fragment length and stride: every WINDOW-character window of every issued token at STRIDE
#: steps is looked for in the text, so any piece of a token of WINDOW + STRIDE - 1 characters or
#: more that reached a log record is found (a whole token, or a cut body's share of one).
WINDOW, STRIDE = 24, 12


def tokens_in(idp: EntraEmulator, text: str) -> int:
    """How many issued tokens have a piece (35+ characters) in ``text``: one pass over the
    text's windows against a table of the tokens' windows (it used to try five windows per
    token, which missed a piece that fell between them)."""
    with idp._rt.lock:
        issued = list(idp._rt.issued)
    table: dict[str, int] = {}
    for index, token in enumerate(issued):
        if len(token) < WINDOW:
            continue
        for start in range(0, len(token) - WINDOW + 1, STRIDE):
            table.setdefault(token[start : start + WINDOW], index)
    found = {
        table[piece]
        for start in range(len(text) - WINDOW + 1)
        if (piece := text[start : start + WINDOW]) in table
    }
    return len(found)


class Row(dict[str, Any]):
    pass


async def _measure(
    idp: EntraEmulator,
    group: str,
    fault: str,
    calls: int,
    one: Callable[[int], Awaitable[Any]],
    *,
    concurrent: bool = True,
    settle: float = 0.0,
) -> Row:
    outcomes: Counter[str] = Counter()
    fallbacks = 0
    before = idp.stats()["endpoints"]
    with LogTrap() as trap:  # every logger, DEBUG
        if concurrent:
            results = await asyncio.gather(
                *(_outcome(one, i) for i in range(calls)), return_exceptions=False
            )
        else:
            results = [await _outcome(one, i) for i in range(calls)]
    for result in results:
        if isinstance(result, TokenResult):
            outcomes["ok"] += 1
            fallbacks += result.kind is IdentityKind.APP
        elif isinstance(result, BaseException):
            outcomes[type(result).__name__] += 1
        else:
            outcomes[str(result)] += 1
    if settle:
        await asyncio.sleep(settle)  # a request held by the emulator is counted when it ends
    after = idp.stats()["endpoints"]
    requests = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return Row(
        group=group,
        fault=fault,
        calls=calls,
        outcomes=dict(outcomes),
        requests={k: v for k, v in requests.items() if v},
        app_fallbacks=fallbacks,
        tokens_logged=tokens_in(idp, "\n".join(trap.lines)),
        log_records=len(trap.lines),
    )


async def _outcome(one: Callable[[int], Awaitable[Any]], i: int) -> Any:
    try:
        return await one(i)
    except Exception as exc:
        return exc


# -- token endpoint ---------------------------------------------------------------------------

TOKEN_FAULTS: list[tuple[str, dict[str, Any]]] = [
    ("500, every request", {"status": 500}),
    ("502, every request", {"status": 502}),
    ("503, every request", {"status": 503}),
    ("504, every request", {"status": 504}),
    ("503 once (transient)", {"status": 503, "count": 1}),
    ("429 Retry-After 30", {"status": 429, "retry_after": 30}),
    ("503 Retry-After 1 once", {"status": 503, "retry_after": 1, "count": 1}),
    ("timeout (no answer within read)", {"status": None, "delay": 2.5}),
    ("slow (answer within read)", {"status": None, "delay": 0.3}),
    ("connection reset", {"drop": True}),
    ("truncated body (not JSON)", {"truncate": 9}),
    # Not the emulator's: a proxy or captive portal in the path answers the token POST itself.
    ("non-JSON body (a proxy's HTML page)", {"proxy_page": True}),
    # Not the emulator's either: an answer whose body drips a byte every 0.2 s, each read well
    # within the read timeout (only the deadline can end it).
    ("trickling body (a byte every 0.2 s)", {"trickle": True}),
]


class _Trickle:
    """A loopback HTTP server answering every request with headers at once, then its body one
    byte every 0.2 s (for at most 30 s); it counts the answers it could finish."""

    def __init__(self) -> None:
        import socket
        import threading

        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.finished = 0
        self._threading = threading
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self._threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: Any) -> None:
        try:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            for _ in range(150):  # bounded: 30 s
                conn.sendall(b" ")
                time.sleep(0.2)
            self.finished += 1
        except OSError:
            pass  # the client cut it
        finally:
            conn.close()

    def route(self, http: Any) -> Any:
        """Send ``http``'s token POSTs here (still a requests.Session: read as the library
        reads any session's answers)."""
        import requests

        def post(url: str, *args: Any, **kwargs: Any) -> Any:
            if "/oauth2/" in url:
                url = f"http://127.0.0.1:{self.port}/token"
            return requests.Session.post(http, url, *args, **kwargs)

        http.post = post
        return http

    def close(self) -> None:
        self.listener.close()


#: What a captive portal or a misconfigured proxy answers instead of the token endpoint (a 200).
PROXY_PAGE = b"<html><body><h1>Sign in to the network</h1><p>Access denied.</p></body></html>"


def _proxy_page_client(http: Any) -> Any:
    """Wrap ``http`` (MSAL's ``http_client``) so that every token POST is answered by a proxy's
    HTML page with status 200 (it never reaches the emulator); discovery still goes through."""
    import requests

    send = http.post

    def post(url: str, *args: Any, **kwargs: Any) -> Any:
        if "/oauth2/" not in url:
            return send(url, *args, **kwargs)
        page = requests.Response()
        page.status_code = 200
        page._content = PROXY_PAGE
        page.headers["Content-Type"] = "text/html"
        page.encoding = "utf-8"
        page.url = url
        return page

    http.post = post
    return http


async def token_endpoint(idp: EntraEmulator, calls: int) -> list[Row]:
    rows = []
    scopes = [f"{idp.mcp.app_id_uri}/.default"]
    trickle: _Trickle | None = None
    for label, spec in TOKEN_FAULTS:
        http = idp.msal_http_client()
        obo = OnBehalfOf(
            client_id=idp.agent.client_id,
            tenant_id=idp.tenant_id,
            authority_host=idp.url,
            client_secret=idp.agent.secret,
            http_client=http,
            timeouts=SUITE_TIMEOUTS,
        )
        chain = TokenChain([obo, AppIdentity()], policy=Policy.USER_OR_APP)
        tokens = [
            idp.user_token(
                "bob" if i % 2 else "alice",
                audience=idp.agent.client_id,
                extra_claims={"uti": f"{label[:8]}-{i}-{time.monotonic_ns()}"},
            )
            for i in range(calls + 1)
        ]
        try:
            with bind_caller(token=tokens[-1]):
                await chain.get_token_async(scopes)  # discovery, before the fault
            idp.clear_faults()
            spec = {"count": 1_000_000, **spec}
            if spec.pop("proxy_page", False):
                _proxy_page_client(http)
            elif spec.pop("trickle", False):
                trickle = _Trickle()
                trickle.route(http)
            else:
                idp.inject_fault("token", **spec)

            async def one(
                i: int, chain: TokenChain = chain, tokens: list[str] = tokens
            ) -> TokenResult:
                with bind_caller(token=tokens[i]):
                    return await chain.get_token_async(scopes)

            rows.append(
                await _measure(
                    idp, "token endpoint", label, calls, one, settle=spec.get("delay", 0.0)
                )
            )
        finally:
            idp.clear_faults()
            SHARED_THROTTLE.clear()  # per authority, process-wide: each fault starts afresh
            chain.close()
            http.close()
            if trickle is not None:
                trickle.close()
                trickle = None
    return rows


# -- JWKS -------------------------------------------------------------------------------------


async def jwks(idp: EntraEmulator, calls: int) -> list[Row]:
    rows = []
    for label, spec in (
        ("JWKS 503", {"status": 503}),
        ("JWKS connection reset", {"drop": True}),
    ):
        verifier = JwtVerifier(
            audiences=[idp.agent.client_id],
            tenants=[idp.tenant_id],
            authority_host=idp.url,
            verify=idp.ca_file,
        )
        tokens = [
            idp.user_token("alice", audience=idp.agent.client_id, extra_claims={"uti": f"j{i}"})
            for i in range(calls)
        ]
        idp.inject_fault("jwks", count=1_000_000, **spec)
        try:

            async def one(
                i: int, verifier: JwtVerifier = verifier, tokens: list[str] = tokens
            ) -> str:
                await verifier.verify_async(tokens[i])
                return "accepted"

            rows.append(await _measure(idp, "JWKS", label, calls, one))
        finally:
            idp.clear_faults()
            SHARED_THROTTLE.clear()  # per authority, process-wide: each fault starts afresh
    return rows


# -- managed identity ---------------------------------------------------------------------------


async def managed_identity(idp: EntraEmulator, calls: int) -> list[Row]:
    rows = []
    env = idp.mi_env()
    for label, spec in (
        ("MI endpoint 503", {"status": 503}),
        ("MI endpoint reset", {"drop": True}),
        ("MI endpoint hangs", {"status": None, "delay": 3.0}),
    ):
        mi = ManagedIdentity(
            client_id=idp.managed_identity.client_id,
            endpoint=env["IDENTITY_ENDPOINT"],
            header=env["IDENTITY_HEADER"],
            timeout=1.0,
        )
        chain = TokenChain([mi], policy=Policy.APP_ONLY)
        idp.inject_fault("msi", count=1_000_000, **spec)
        try:

            async def one(i: int, chain: TokenChain = chain) -> TokenResult:
                return await chain.get_token_async([f"{idp.mcp.app_id_uri}/.default"], caller=None)

            rows.append(
                await _measure(
                    idp,
                    "managed identity",
                    label,
                    calls,
                    one,
                    concurrent=False,
                    settle=spec.get("delay", 0.0),
                )
            )
        finally:
            idp.clear_faults()
            SHARED_THROTTLE.clear()  # per authority, process-wide: each fault starts afresh
            chain.close()
    return rows


# -- developer CLI ------------------------------------------------------------------------------


async def developer_cli(idp: EntraEmulator, calls: int) -> list[Row]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-faults-") as tmp:
        hangs = {}
        for name in ("az", "azd"):
            hang = hangs[name] = Path(tmp) / name
            hang.write_text("#!/bin/sh\nsleep 30\n")
            hang.chmod(hang.stat().st_mode | stat.S_IXUSR)
        for label, tool, executable in (
            ("az missing", "az", str(Path(tmp) / "missing" / "az")),
            ("azd missing", "azd", str(Path(tmp) / "missing" / "azd")),
            ("az hangs", "az", str(hangs["az"])),
            ("azd hangs", "azd", str(hangs["azd"])),
        ):
            try:
                cli = AzureCli(tool=tool, executable=executable, timeout=1.0)
            except Exception as exc:  # refused at construction: also a typed outcome
                rows.append(
                    Row(
                        group="developer CLI",
                        fault=label,
                        calls=1,
                        outcomes={type(exc).__name__: 1},
                        requests={},
                        app_fallbacks=0,
                        tokens_logged=0,
                        log_records=0,
                    )
                )
                continue
            chain = TokenChain([cli], policy=Policy.DEVELOPER)
            try:

                async def one(i: int, chain: TokenChain = chain) -> TokenResult:
                    return await chain.get_token_async(
                        [f"{idp.mcp.app_id_uri}/.default"], caller=None
                    )

                rows.append(
                    await _measure(idp, "developer CLI", label, calls, one, concurrent=False)
                )
            finally:
                chain.close()
    return rows


# -- MCP server ---------------------------------------------------------------------------------


async def mcp_server(calls: int) -> list[Row]:
    """The MCP scenarios live with their test (tests/faults/_mcp.py, which builds on the
    integration tests' real MCP server)."""
    import warnings

    from mcp import MCPDeprecationWarning

    tests = str(Path(__file__).resolve().parents[1] / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    from faults._mcp import mcp_faults

    warnings.filterwarnings("ignore", message="ping is removed", category=MCPDeprecationWarning)
    return [Row(r) for r in await mcp_faults(calls=calls)]


# -- report -----------------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# Fault suite",
        "",
        f"Generated by `python -m bench._faults{' --quick' if results['quick'] else ''}` "
        f"({results['calls']} calls per fault; {m.get('cpu_model', '?')}, "
        f"{m.get('cores', '?')} cores, load {m.get('load_average_at_start', '?')}). "
        "Every fault is injected by the emulator over HTTPS and every call goes through the "
        "public API with real MSAL. Timeouts for the suite: connect 1 s, read 1 s, deadline "
        "3 s, 2 retries. Requests are counted by the emulator when it answers (a request held "
        "past the client's timeout is counted when its delay ends, possibly in a later row).",
        "",
        "| where | fault | calls | outcomes | requests seen by the emulator | app-identity "
        "fallbacks | MCP connections lost for good | tokens logged |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(row["outcomes"].items()))
        if "outcomes_after" in row:
            after = ", ".join(f"{k} {v}" for k, v in sorted(row["outcomes_after"].items()))
            outcomes = f"during: {outcomes}; after: {after}"
        requests = ", ".join(f"{k} {v}" for k, v in sorted(row["requests"].items())) or "-"
        lost = row.get("lost_for_good", "-")
        lines.append(
            f"| {row['group']} | {row['fault']} | {row['calls']} | {outcomes} | {requests} | "
            f"{row['app_fallbacks']} | {lost} | {row['tokens_logged']} |"
        )
    totals = results["totals"]
    lines += [
        "",
        f"Totals: {totals['calls']} calls, {totals['app_fallbacks']} app-identity fallbacks "
        f"(must be 0), {totals['tokens_logged']} tokens logged (must be 0), "
        f"{totals['untyped']} untyped errors (must be 0), {totals['mcp_lost_for_good']} MCP "
        f"connections lost for good (must be 0), {totals['mcp_ran_twice']} tool calls run "
        "twice (must be 0).",
        "",
        "MCP server rows: `entra_mcp_tool` against a real MCP server (EntraTokenVerifier), half "
        "the calls while the fault lasts, half after; a call answered as someone else or run "
        "twice by the server would count as a fallback (0 in every row).",
    ]
    return "\n".join(lines) + "\n"


TYPED = {
    "ok",
    "accepted",
    "SourceUnavailable",
    "Throttled",
    "EntraError",
    "SigningKeysUnavailable",
    "TokenVerificationError",  # also a tool call the MCP server refused with 401
    "InsufficientScope",  # a tool call the MCP server refused with 403 insufficient_scope
    "ConfigurationError",
    "PolicyViolation",
    "ToolExecutionException",  # agent-framework's error for a tool call, with our message
    "ToolException",  # agent-framework's error for a connection that is being re-established
}


async def run(quick: bool) -> dict[str, Any]:
    calls = 6 if quick else 40
    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    with EntraEmulator() as idp:
        rows: list[Row] = []
        rows += await token_endpoint(idp, calls)
        rows += await jwks(idp, calls)
        rows += await developer_cli(idp, 2 if quick else 3)
        rows += await managed_identity(idp, 2 if quick else 5)
    rows += await mcp_server(2 if quick else 10)
    untyped = sum(v for row in rows for k, v in row["outcomes"].items() if k not in TYPED)
    lost = sum(row.get("lost_for_good", 0) for row in rows)
    return {
        "quick": quick,
        "calls": calls,
        "machine": machine(),
        "rows": rows,
        "totals": {
            "calls": sum(r["calls"] for r in rows),
            "app_fallbacks": sum(r["app_fallbacks"] for r in rows),
            "tokens_logged": sum(r["tokens_logged"] for r in rows),
            "accepted_without_keys": sum(
                r["outcomes"].get("accepted", 0) for r in rows if r["group"] == "JWKS"
            ),
            "untyped": untyped,
            "mcp_lost_for_good": lost,
            "mcp_ran_twice": sum(row.get("ran_twice", 0) for row in rows),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._faults", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    results = asyncio.run(run(args.quick))
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    (out / "faults.json").write_text(json.dumps(results, indent=2))
    text = markdown(results)
    (out / "faults.md").write_text(text)
    print(text)
    t = results["totals"]
    bad = (
        t["app_fallbacks"]
        or t["tokens_logged"]
        or t["accepted_without_keys"]
        or t["untyped"]
        or t["mcp_lost_for_good"]
        or t["mcp_ran_twice"]
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
