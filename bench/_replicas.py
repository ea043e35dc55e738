"""Four agent replica PROCESSES sharing one Redis: round trips, cold burst, L2 cost, memory.

Each replica is its own Python process with its own ``TokenChain([OnBehalfOf])`` (L1) and, in
the ``shared`` variant, a ``SharedTokenCache`` over one ``redis-server`` (L2); the ``local``
variant is the same without L2 (what N replicas do today). Both run in every round, in an
order rotated per round, each with cold caches (a fresh Redis namespace). POSTs are counted by
the emulator, Redis commands by Redis (``INFO``), memory by Redis (``MEMORY USAGE``).

* ``round_trips``: U users x C calls, call j of user u on replica (u + j) % 4: token POSTs,
  expected exactly U with L2 (up to 4U without).
* ``cold_burst``: 64 concurrent calls of one new user, 16 on each replica: POSTs (1 with L2).
* ``l2_hit``: per-call time of an L2 hit (another replica acquired) and of the L1 hit that
  follows, in the same replica and round: microseconds and the ratio L2/L1.
* ``redis_commands_per_l1_hit``: Redis commands during N L1 hits / N (expected 0).
* ``memory_per_entry``: Redis' ``MEMORY USAGE`` of each L2 entry against its sealed value's
  length (bound: sealed value + 512 B).

``python -m bench._replicas [--quick]`` runs it alone and prints JSON; ``python -m bench`` runs
it as the ``replicas`` scenario.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ._emu import Emulator
from ._util import stop, summary

REPLICAS = 4
_PASSWORD = "bench-redis-" + secrets.token_hex(8)


# --- the Redis server ---------------------------------------------------------------------------


class RedisServer:
    """``redis-server`` on a free loopback port with a password; ready when it answers PING."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed (Debian: apt-get install redis-server)"
            )
        self._dir = tempfile.TemporaryDirectory(prefix="bench-redis-")
        # A free port can be taken before redis binds it (another process' client socket):
        # a server that exits at once is started again on another port (bounded).
        for _ in range(5):
            if self._start(binary):
                return
        self.close()
        raise RuntimeError("redis-server did not start (5 ports tried)")

    def _start(self, binary: str) -> bool:
        import redis

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.url = f"redis://:{_PASSWORD}@127.0.0.1:{self.port}/0"
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--requirepass", _PASSWORD,
             "--save", "", "--appendonly", "no", "--dir", self._dir.name, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        self.client = redis.Redis.from_url(self.url, socket_timeout=5)
        for _ in range(500):  # bounded readiness poll
            if self.proc.poll() is not None:
                self.client.close()
                return False
            try:
                if self.client.ping():
                    return True
            except redis.exceptions.ConnectionError:
                time.sleep(0.02)
        self.close()
        raise RuntimeError("redis-server did not answer PING")

    def commands(self) -> int:
        return int(self.client.info("stats")["total_commands_processed"])

    def entries(self, namespace: str) -> list[tuple[int, int]]:
        """(MEMORY USAGE, value length) of every L2 token entry under ``namespace``."""
        out = []
        for key in self.client.scan_iter(match=f"{namespace}ep:v1:tok:*", count=1000):
            out.append(
                (int(self.client.memory_usage(key, samples=0) or 0), self.client.strlen(key))
            )
        return out

    def close(self) -> None:
        self.client.close()
        stop(self.proc)
        self._dir.cleanup()


# --- a replica process --------------------------------------------------------------------------


async def _child(state_file: str, redis_url: str, keys: str) -> None:
    """Read one JSON command per line on stdin, answer one JSON line on stdout."""
    import requests

    from entra_passthrough import Keyring, OnBehalfOf, Policy, TokenCache, TokenChain
    from entra_passthrough._caller import Caller
    from entra_passthrough.redis import RedisStore, SharedTokenCache

    emu = Emulator.attach(json.loads(Path(state_file).read_text()))
    keyring = Keyring.from_string(keys)
    chain: TokenChain | None = None
    store: RedisStore | None = None
    callers: dict[str, Caller] = {}
    scopes = [emu.mcp_scope]

    async def build(shared: bool, namespace: str) -> None:
        nonlocal chain, store
        if chain is not None:
            chain.close()
        if store is not None:
            await store.aclose()
        store = RedisStore.from_url(redis_url, namespace=namespace) if shared else None
        session = requests.Session()
        session.verify = emu.ca_file
        session.trust_env = False
        chain = TokenChain(
            [
                OnBehalfOf(
                    client_id=emu.agent.client_id,
                    tenant_id=emu.tenant_id,
                    client_secret=emu.agent.secret,
                    authority_host=emu.url,
                    http_client=session,
                )
            ],
            policy=Policy.USER_ONLY,
            cache=TokenCache(shared=SharedTokenCache(store, keyring) if store else None),
        )
        callers.clear()

    async def call(assertion: str) -> int:
        assert chain is not None
        caller = callers.get(assertion)
        if caller is None:
            caller = callers[assertion] = Caller.from_token(assertion)
        result = await chain.get_token_async(scopes, caller=caller)
        return len(result.token)

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=256 * 1024 * 1024)  # commands carry assertions
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        cmd = json.loads(line)
        op = cmd["op"]
        answer: dict[str, Any] = {}
        try:
            if op == "build":
                await build(cmd["shared"], cmd["namespace"])
            elif op == "calls":
                lengths = await asyncio.gather(*(call(a) for a in cmd["assertions"]))
                answer["token_lengths"] = sorted(set(lengths))
            elif op == "time":  # each assertion: first call (L2 hit), then second (L1 hit)
                first, second = [], []
                for a in cmd["assertions"]:
                    t0 = time.perf_counter_ns()
                    await call(a)
                    t1 = time.perf_counter_ns()
                    await call(a)
                    t2 = time.perf_counter_ns()
                    first.append((t1 - t0) / 1000)
                    second.append((t2 - t1) / 1000)
                answer.update(first_us=first, second_us=second)
            elif op == "quit":
                break
        except Exception as exc:  # reported, never hidden
            answer["error"] = f"{type(exc).__name__}: {exc}"
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    if chain is not None:
        chain.close()
    if store is not None:
        await store.aclose()


class Replica:
    def __init__(self, state_file: Path, redis_url: str, keys: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench._replicas", "--child", str(state_file), redis_url, keys],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def _send(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"replica exited with {self.proc.poll()}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"replica failed: {answer['error']}")
        return answer

    async def send(self, **cmd: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self._send, **cmd)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, OSError, ValueError):
            self._send(op="quit")
        stop(self.proc)


# --- the scenarios ------------------------------------------------------------------------------


async def replicas(*, quick: bool, latency: float = 0.02) -> dict[str, Any]:
    users, calls, burst, rounds, timed = (6, 4, 64, 2, 20) if quick else (40, 8, 64, 3, 100)
    per_round = users + 1 + timed
    emu = Emulator(token_latency=latency, users=per_round * rounds * 2)
    server: RedisServer | None = None
    members: list[Replica] = []
    try:
        pool = await emu.mint_assertions(per_round * rounds * 2)
        server = RedisServer()
        keys = "k1:" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        with tempfile.TemporaryDirectory(prefix="bench-replicas-") as tmp:
            state_file = Path(tmp) / "state.json"
            state_file.write_text(json.dumps(emu.state))
            members = [Replica(state_file, server.url, keys) for _ in range(REPLICAS)]
            return await _measure(emu, server, members, pool, users, calls, burst, rounds, timed)
    finally:
        for member in members:
            member.close()
        if server is not None:
            server.close()
        emu.close()


async def _measure(
    emu: Emulator,
    server: RedisServer,
    members: list[Replica],
    pool: list[str],
    users: int,
    calls: int,
    burst: int,
    rounds: int,
    timed: int,
) -> dict[str, Any]:
    posts: dict[str, list[int]] = {"shared": [], "local": []}
    burst_posts: dict[str, list[int]] = {"shared": [], "local": []}
    l2_us: list[float] = []
    l1_us: list[float] = []
    commands_per_hit: list[float] = []
    memory: list[tuple[int, int]] = []
    token_lengths: set[int] = set()
    cursor = 0
    for r in range(rounds):
        order = ["shared", "local"] if r % 2 == 0 else ["local", "shared"]
        for variant in order:
            namespace = f"r{r}{variant}:"
            await asyncio.gather(
                *(
                    m.send(op="build", shared=variant == "shared", namespace=namespace)
                    for m in members
                )
            )
            chunk = pool[cursor : cursor + users + 1 + timed]
            cursor += users + 1 + timed
            people, newcomer, timed_users = chunk[:users], chunk[users], chunk[users + 1 :]
            # round trips: U users x C calls spread over the replicas
            plan: list[list[str]] = [[] for _ in members]
            for u, assertion in enumerate(people):
                for j in range(calls):
                    plan[(u + j) % len(members)].append(assertion)
            before = emu.obo_posts()
            answers = await asyncio.gather(
                *(m.send(op="calls", assertions=p) for m, p in zip(members, plan, strict=True))
            )
            posts[variant].append(emu.obo_posts() - before)
            for a in answers:
                token_lengths.update(a["token_lengths"])
            # cold burst: one new user, `burst` calls at once over the replicas
            share = [newcomer] * (burst // len(members))
            before = emu.obo_posts()
            await asyncio.gather(*(m.send(op="calls", assertions=share) for m in members))
            burst_posts[variant].append(emu.obo_posts() - before)
            if variant != "shared":
                continue
            # L2 hit vs L1 hit: replica 0 acquires, replica 1 reads L2 then L1
            await members[0].send(op="calls", assertions=timed_users)
            timing = await members[1].send(op="time", assertions=timed_users)
            l2_us.extend(timing["first_us"])
            l1_us.extend(timing["second_us"])
            # Redis commands while replica 1 serves L1 hits only
            before = server.commands()
            await members[1].send(op="calls", assertions=timed_users * 5)
            commands_per_hit.append((server.commands() - before - 1) / (len(timed_users) * 5))
            memory.extend(server.entries(namespace))
    l2, l1 = summary(l2_us), summary(l1_us)
    usage = [m for m, _ in memory]
    value = [v for _, v in memory]
    over = [m - v for m, v in memory]
    return {
        "replicas": len(members),
        "users": users,
        "calls_per_user": calls,
        "rounds": rounds,
        "round_trips": {
            "expected_with_l2": users,
            "shared": summary(posts["shared"]),
            "local": summary(posts["local"]),
            "shared_all_rounds": posts["shared"],
            "local_all_rounds": posts["local"],
        },
        "cold_burst": {
            "calls": burst,
            "shared": summary(burst_posts["shared"]),
            "local": summary(burst_posts["local"]),
            "shared_all_rounds": burst_posts["shared"],
        },
        "l2_hit_us": l2,
        "l1_hit_us": l1,
        "l2_over_l1_ratio": l2["median"] / l1["median"] if l1["n"] and l1["median"] else None,
        "redis_commands_per_l1_hit": max(commands_per_hit) if commands_per_hit else None,
        "memory_per_entry": {
            "entries": len(memory),
            "access_token_bytes": sorted(token_lengths),
            "memory_usage_bytes": summary(usage),
            "sealed_value_bytes": summary(value),
            "over_sealed_value_bytes_max": max(over) if over else None,
            "bound_bytes": 512,
            "within_bound": bool(over) and max(over) <= 512,
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "--child":
        asyncio.run(_child(args[1], args[2], args[3]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m bench._replicas")
    parser.add_argument("--quick", action="store_true")
    quick = parser.parse_args(args).quick
    print(json.dumps(asyncio.run(replicas(quick=quick)), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
