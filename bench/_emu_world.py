"""The emulator process the benchmarks talk to: ``python -m bench._emu_world``.

The same ``EntraEmulator`` that ``entra-passthrough emulator`` runs, in its own process, with the
default world plus ``--users`` extra consented users (``bench-user-N``): round trips per *user*
need distinct users, and MSAL keys its token cache by account, so assertions of two users would
hide its growth. When ready it writes a JSON state file (url, CA, tenant ids, apps, users) and then
serves until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

from entra_passthrough.testing import EntraEmulator, Grant, User, World, stable_id
from entra_passthrough.testing._cli import state as cli_state

PASSWORD = "bench-password"  # test users of a loopback emulator


def world(users: int, access_token_lifetime: int | None = None) -> World:
    w = World.default()
    if access_token_lifetime:  # compressed lifetimes (bench._lifetime)
        w = w.with_lifetimes(replace(w.lifetimes, access_token=access_token_lifetime))
    tenant = w.tenants[0]
    agent, mcp = w.app("agent"), w.app("mcp")
    if agent is None or mcp is None:
        raise RuntimeError("the default world has no agent/mcp app")
    grants = list(w.grants)
    for i in range(users):
        name = f"bench-user-{i}"
        w = w.with_user(
            User(
                name=name,
                upn=f"{name}@{tenant.domain}",
                oid=stable_id("bench", name),
                tenant_id=tenant.id,
                password=PASSWORD,
                display_name=f"Bench User {i}",
            )
        )
        # per-user consent agent -> mcp, as the default world grants alice and bob
        grants.append(Grant(agent.client_id, mcp.client_id, ("access_as_user",), user=name))
    return World(
        tenants=w.tenants,
        apps=w.apps,
        users=w.users,
        managed_identities=w.managed_identities,
        grants=tuple(grants),
        role_assignments=w.role_assignments,
        lifetimes=w.lifetimes,
    )


def state(idp: EntraEmulator, token_latency: float) -> dict[str, Any]:
    # The same state file `entra-passthrough emulator --state-file` writes (bench._emu reads
    # either: BENCH_EMULATOR_CMD), plus the latency it was started with.
    return {**cli_state(idp), "token_latency": token_latency}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=0)
    parser.add_argument("--token-latency", type=float, default=0.0)
    parser.add_argument("--access-token-lifetime", type=int, default=0, help="seconds")
    parser.add_argument("--state-file", type=Path, required=True)
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    w = world(args.users, args.access_token_lifetime)
    with EntraEmulator(world=w, token_latency=args.token_latency) as idp:
        tmp = args.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state(idp, args.token_latency)))
        os.replace(tmp, args.state_file)
        stop.wait()


if __name__ == "__main__":
    main()
