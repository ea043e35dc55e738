"""``entra-passthrough emulator``: run the local Entra emulator in the foreground.

Prints the issuer, the CA file, the tenants, apps and users (a readable table), optionally writes
a JSON state file once it is ready (benchmarks run the emulator in its own process and read it),
and runs until SIGINT/SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from .._errors import ConfigurationError
from ..cli import parser_for
from ._emulator import EntraEmulator
from ._world import World


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True)), line]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(x.rstrip() for x in out)


def describe(idp: EntraEmulator, *, show_secrets: bool = True) -> str:
    """The world as text: what a person needs to point a client at the emulator."""
    w = idp.world
    parts = [
        f"Entra emulator at {idp.url}",
        f"  authority (MSAL):  {idp.authority}   (instance_discovery=False)",
        f"  issuer v2:         {idp.issuer()}",
        f"  issuer v1:         {idp.issuer(version='1.0')}   (stands in for sts.windows.net)",
        f"  CA file:           {idp.ca_file}",
        f"  managed identity:  IDENTITY_ENDPOINT={idp.mi_endpoint}",
        "",
        _table([(t.name, t.id, t.domain) for t in w.tenants], ("tenant", "id", "domain")),
        "",
        _table(
            [
                (
                    a.name,
                    a.client_id,
                    a.app_id_uri or "",
                    f"v{a.access_token_version}",
                    ", ".join(a.exposed_scopes),
                    (a.secret or "") if show_secrets else ("<set>" if a.secret else ""),
                    "yes" if a.certificate_pem else "",
                )
                for a in w.apps
            ],
            ("app", "client id", "App ID URI", "tokens", "scopes", "secret", "cert"),
        ),
        "",
        _table(
            [
                (
                    u.name,
                    u.upn,
                    u.oid,
                    w.tenant(u.tenant_id).name if w.tenant(u.tenant_id) else u.tenant_id,  # type: ignore[union-attr]
                    u.password if show_secrets else "<set>",
                    _notes(idp, u.name),
                )
                for u in w.users
            ],
            ("user", "upn", "oid", "home tenant", "password", "notes"),
        ),
        "",
        _table(
            [(m.name, m.client_id, m.object_id) for m in w.managed_identities],
            ("managed identity", "client id", "object (principal) id"),
        ),
    ]
    return "\n".join(parts)


def _notes(idp: EntraEmulator, name: str) -> str:
    u = idp.users[name]
    notes = []
    consented = idp.world.app("agent") is not None and any(
        g.user == name and g.client_id == idp.agent.client_id for g in idp.world.grants
    )
    notes.append("consented agent->mcp" if consented else "NOT consented")
    if u.guest:
        notes.append("guest")
    if u.mfa_required_for:
        notes.append("MFA required (50076)")
    if u.blocked_for:
        notes.append("blocked by CA (53003)")
    return ", ".join(notes)


def state(idp: EntraEmulator) -> dict[str, Any]:
    w = idp.world
    return {
        "url": idp.url,
        "authority": idp.authority,
        "ca_file": idp.ca_file,
        "tenant_id": idp.tenant_id,
        "second_tenant_id": idp.second_tenant_id,
        "tenants": {t.name: t.id for t in w.tenants},
        "issuer": idp.issuer(),
        "mi": idp.mi_env(),
        # For AzureCliCredential in another process: prepend bin_dir to PATH, set env.
        "az": _az_state(idp),
        "apps": {
            a.name: {
                "client_id": a.client_id,
                "app_id_uri": a.app_id_uri,
                "secret": a.secret,
                "scope": a.scope,
                "access_token_version": a.access_token_version,
            }
            for a in w.apps
        },
        "users": {
            u.name: {"upn": u.upn, "oid": u.oid, "tenant_id": u.tenant_id, "password": u.password}
            for u in w.users
        },
        "managed_identities": {
            m.name: {"client_id": m.client_id, "object_id": m.object_id}
            for m in w.managed_identities
        },
    }


def _no_temporary_folder() -> str | None:
    """Why the emulator cannot write its TLS files (its CA, the server's key) to a temporary
    folder, or ``None``: a read-only container file system failed at start as "could not
    listen on 127.0.0.1", blaming the port."""
    folder = "the temporary folder"
    try:
        folder = tempfile.gettempdir()
        os.rmdir(tempfile.mkdtemp(prefix="entra-emulator-"))
    except OSError as exc:
        return (
            f"cannot write its TLS files (CA, server key) to {folder} "
            f"({exc.strerror or type(exc).__name__}); set TMPDIR to a folder this user can "
            "write"
        )
    return None


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _az_state(idp: EntraEmulator) -> dict[str, Any]:
    env = idp.az_env(user="alice")
    bin_dir = env.pop("PATH").split(os.pathsep, 1)[0]
    return {"bin_dir": bin_dir, "env": env}


def _refusal(port: int, latency: float, state_file: Path | None) -> str | None:
    """What is wrong with the arguments, before anything starts (a line, not a traceback)."""
    if not 0 <= port <= 65535:
        return f"--port must be 0-65535 (0: any free port), got {port}"
    if not 0 <= latency <= 3600:  # NaN fails both
        return f"--token-latency must be 0-3600 seconds, got {latency}"
    if port:
        with socket.socket() as probe:  # uvicorn's own failure is a log line and sys.exit
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            try:
                probe.bind(("127.0.0.1", port))
            except OSError as exc:
                return f"--port: 127.0.0.1:{port} is not free ({exc.strerror}); pick another, or 0"
    if state_file is not None:
        if not state_file.parent.is_dir():
            return f"--state-file: the folder {state_file.parent} does not exist"
        if state_file.is_dir():
            return f"--state-file: {state_file} is a folder; name a file in it"
        if not os.access(state_file.parent, os.W_OK):
            return f"--state-file: the folder {state_file.parent} cannot be written"
    return None


def main(argv: list[str]) -> int:
    args = parser_for("emulator").parse_args(argv)  # defined with the core only (--help works)
    config = Path(args.config) if args.config else None
    state_file = Path(args.state_file) if args.state_file else None
    try:
        world = World.from_file(config) if config else World.default()
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        # TOMLDecodeError is a ValueError; a file whose top level is not a table, AttributeError
        # (an OSError says what happened to the file; anything else, which kind of problem)
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else None
        if isinstance(exc, ConfigurationError):  # says what, where and the fix: all of it
            why = " ".join(str(exc).split())[:600]
        sys.stderr.write(
            f"entra-passthrough emulator: cannot load {config}: {why or type(exc).__name__}"
            + ("" if why else f" ({str(exc)[:200]})")
            + "\n"
        )
        return 2
    refusal = _refusal(args.port, args.token_latency, state_file)
    if refusal:
        sys.stderr.write(f"entra-passthrough emulator: {refusal}\n")
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        del signum, frame
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    emulator = EntraEmulator(world=world, port=args.port, token_latency=args.token_latency)
    unwritable = _no_temporary_folder()
    if unwritable is not None:
        sys.stderr.write(f"entra-passthrough emulator: {unwritable}\n")
        return 2
    try:
        emulator.start()
    except (OSError, RuntimeError) as exc:  # a port taken since the check above
        sys.stderr.write(
            f"entra-passthrough emulator: could not listen on 127.0.0.1:{args.port} "
            f"({type(exc).__name__}); pick a free port, or 0 for any\n"
        )
        return 2
    with emulator as idp:
        _say(describe(idp, show_secrets=not args.hide_secrets))
        if state_file:
            tmp = state_file.with_suffix(state_file.suffix + ".tmp")
            try:
                tmp.write_text(json.dumps(state(idp), indent=2), encoding="utf-8")
                os.chmod(tmp, 0o600)
                tmp.replace(state_file)  # atomic: readers never see a partial file
            except OSError as exc:  # written meanwhile, or a file system that refuses it
                sys.stderr.write(
                    f"entra-passthrough emulator: --state-file: cannot write {state_file} "
                    f"({exc.strerror or type(exc).__name__})\n"
                )
                return 2
        _say("\nReady. Ctrl+C to stop.")
        while not stop.wait(3600):
            pass
    sys.stderr.write("Emulator stopped.\n")
    return 0
