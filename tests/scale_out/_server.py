"""A real ``redis-server`` on a loopback port, started and stopped by the tests.

Password-protected (``requirepass``), optionally TLS (a CA made here), optionally with a data
directory kept across restarts (``appendonly``) and a ``maxmemory``. When ``CI`` is set, a test
that needs Redis fails if ``redis-server`` cannot start; it never skips there.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from entra_passthrough.testing._ca import make_tls_material

PASSWORD = "test-redis-password-1"


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        message = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    """One redis-server process. ``start()`` polls until it answers PING (bounded)."""

    tls: bool = False
    maxmemory: str | None = None
    persist: bool = True
    password: str = PASSWORD
    port: int = field(default_factory=free_port)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ep-redis-")))
    proc: subprocess.Popen[bytes] | None = None
    ca_file: str | None = None
    started: bool = False

    def __post_init__(self) -> None:
        if self.tls:
            material = make_tls_material()
            (self.workdir / "ca.pem").write_bytes(material.ca_cert_pem)
            (self.workdir / "cert.pem").write_bytes(material.server_cert_pem)
            (self.workdir / "key.pem").write_bytes(material.server_key_pem)
            self.ca_file = str(self.workdir / "ca.pem")

    @property
    def url(self) -> str:
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://:{self.password}@127.0.0.1:{self.port}/0"

    def args(self) -> list[str]:
        args = [
            redis_binary(),
            "--bind", "127.0.0.1",
            "--dir", str(self.workdir),
            "--requirepass", self.password,
            "--save", "",
            "--appendonly", "yes" if self.persist else "no",
            "--appendfsync", "always",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str(self.workdir / "redis.log"),
        ]  # fmt: skip
        if self.tls:
            args += [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cert-file", str(self.workdir / "cert.pem"),
                "--tls-key-file", str(self.workdir / "key.pem"),
                "--tls-ca-cert-file", str(self.workdir / "ca.pem"),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        else:
            args += ["--port", str(self.port)]
        if self.maxmemory:
            args += ["--maxmemory", self.maxmemory, "--maxmemory-policy", "noeviction"]
        return args

    def client(self) -> redis.Redis:
        extra = {"ssl_ca_certs": self.ca_file} if self.tls else {}
        return redis.Redis.from_url(self.url, socket_timeout=2, **extra)

    def start(self) -> RedisServer:
        """Start (or restart, on the same port and data). A first start whose free port was
        taken meanwhile (another test's server or client socket) moves to another port."""
        first = not self.started
        for _ in range(5):  # bounded: a port taken between free_port() and redis' bind
            log = self.workdir / "redis.log"
            log.unlink(missing_ok=True)
            self.proc = subprocess.Popen(self.args(), stdout=subprocess.DEVNULL)
            try:
                if self._wait_ready():
                    self.started = True
                    return self
            except BaseException:
                self.kill()
                raise
            text = log.read_text(errors="replace") if log.exists() else ""
            if not (first and "Address already in use" in text):
                message = f"redis-server exited with {self.proc.returncode}: {text[-500:]}"
                self.proc = None
                if os.environ.get("CI"):
                    pytest.fail(message)
                pytest.skip(message)
            self.proc = None
            self.port = free_port()
        pytest.fail("redis-server found no free port in 5 tries")

    def _wait_ready(self) -> bool:
        """``True`` once it answers PING; ``False`` if it exited."""
        assert self.proc is not None
        client = self.client()
        try:
            for _ in range(500):  # bounded readiness poll (~10 s)
                if self.proc.poll() is not None:
                    return False
                try:
                    if client.ping():
                        return True
                except redis.exceptions.ConnectionError:
                    time.sleep(0.02)
            pytest.fail("redis-server did not answer PING in time")
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: no chance to save anything (the AOF written so far stays)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def wipe(self) -> None:
        """Lose the data: remove the append-only files (call after ``kill``)."""
        for path in self.workdir.glob("appendonly*"):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)


def obo_chain(idp: Any, session: Any, cache: Any) -> Any:
    """One replica's chain: the emulator's agent app doing OBO (user_only) over ``cache``."""
    from entra_passthrough import OnBehalfOf, Policy, TokenChain

    return TokenChain(
        [
            OnBehalfOf(
                client_id=idp.agent.client_id,
                tenant_id=idp.tenant_id,
                client_secret=idp.agent.secret,
                authority_host=idp.url,
                http_client=session,
            )
        ],
        policy=Policy.USER_ONLY,
        cache=cache,
    )


class AclUser:
    """A Redis ACL user of its own for replica A, whose script calls (the lease's
    compare-and-set) can be refused and allowed again: a store that fails one renewal."""

    def __init__(self, server: RedisServer) -> None:
        self.name = f"replica-a-{free_port()}"
        self.server = server
        self.admin = server.client()
        self.admin.acl_setuser(
            self.name, enabled=True, passwords=[f"+{PASSWORD}"], keys=["*"], commands=["+@all"]
        )
        self.url = f"redis://{self.name}:{PASSWORD}@127.0.0.1:{server.port}/0"

    def refuse_scripts(self) -> None:
        self.admin.acl_setuser(self.name, commands=["-eval", "-evalsha"])

    def allow_scripts(self) -> None:
        self.admin.acl_setuser(self.name, commands=["+eval", "+evalsha"])

    def close(self) -> None:
        self.admin.acl_deluser(self.name)
        self.admin.close()


def cluster_port() -> int:
    """A free loopback port whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):  # bounded
        port = free_port()
        if port > 55_000:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10_000))
            except OSError:
                continue
        return port
    pytest.fail("no free port pair for a Redis Cluster node in 200 tries")


@dataclass
class RedisClusterServers:
    """A Redis Cluster of ``masters`` password-protected masters on loopback (what Azure
    Managed Redis exposes with its default OSS clustering policy), made with ``redis-cli
    --cluster create``. The slots are spread over the masters, so the library's keys land on
    every node."""

    masters: int = 3
    nodes: list[RedisServer] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The first node's URL: a cluster client discovers the others from it."""
        return self.nodes[0].url

    def start(self) -> RedisClusterServers:
        cli = shutil.which("redis-cli")
        if cli is None:
            message = "redis-cli is not installed (apt-get install redis-tools)"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        for _ in range(self.masters):
            node = _ClusterNode(persist=False, port=cluster_port())
            self.nodes.append(node)
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        made = subprocess.run(
            [cli, "-a", PASSWORD, "--no-auth-warning", "--cluster", "create", *addresses,
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        if made.returncode != 0:
            self.stop()
            pytest.fail(f"redis-cli --cluster create failed: {made.stdout[-500:]!r}")
        for node in self.nodes:
            client = node.client()
            try:
                for _ in range(500):  # bounded (~10 s): every node sees every slot served
                    if b"cluster_state:ok" in client.execute_command("CLUSTER", "INFO"):
                        break
                    time.sleep(0.02)
                else:
                    pytest.fail("the Redis Cluster did not reach cluster_state:ok in time")
            finally:
                client.close()
        return self

    def keys(self) -> dict[int, list[bytes]]:
        """Each node's keys (port -> names)."""
        found: dict[int, list[bytes]] = {}
        for node in self.nodes:
            client = node.client()
            try:
                found[node.port] = list(client.scan_iter("*", count=1000))
            finally:
                client.close()
        return found

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@dataclass
class _ClusterNode(RedisServer):
    """One node of ``RedisClusterServers``: cluster mode, with the password for the cluster
    bus too (``masterauth``)."""

    def args(self) -> list[str]:
        return [
            *super().args(),
            "--cluster-enabled", "yes",
            "--cluster-config-file", str(self.workdir / "nodes.conf"),
            "--cluster-node-timeout", "5000",
            "--masterauth", self.password,
        ]  # fmt: skip
