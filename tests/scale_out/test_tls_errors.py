"""``rediss://`` misconfigurations say what is wrong: a CA file that does not exist is a
``ConfigurationError`` at construction naming its variable; a certificate that does not verify
says certificate verification (not "cannot be reached ... check host, port") and names the
variable that trusts a private CA. Against a real TLS redis-server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from entra_passthrough import ConfigurationError, SourceUnavailable
from entra_passthrough.redis import RedisStore

from ._server import PASSWORD, RedisServer

CA_VAR = "ENTRA_PASSTHROUGH_REDIS_CA_FILE"


@pytest.fixture(scope="module")
def tls_server() -> Iterator[RedisServer]:
    server = RedisServer(tls=True).start()
    yield server
    server.stop()


def test_a_ca_file_that_does_not_exist_is_refused_at_construction(
    tls_server: RedisServer, tmp_path: Path
) -> None:
    missing = str(tmp_path / "no-such-ca.pem")
    with pytest.raises(ConfigurationError, match=CA_VAR) as info:
        RedisStore.from_url(tls_server.url, ca_file=missing)
    assert "does not exist" in str(info.value)
    assert PASSWORD not in str(info.value)
    with pytest.raises(ConfigurationError, match=CA_VAR):
        RedisStore.from_env({"ENTRA_PASSTHROUGH_REDIS_URL": tls_server.url, CA_VAR: missing})
    with pytest.raises(ConfigurationError, match=CA_VAR):  # a directory is no CA file
        RedisStore.from_url(tls_server.url, ca_file=str(tmp_path))
    assert tls_server.ca_file is not None
    RedisStore.from_url(tls_server.url, ca_file=tls_server.ca_file)  # an existing one: fine


async def test_an_untrusted_certificate_says_certificate_verification(
    tls_server: RedisServer,
) -> None:
    store = RedisStore.from_url(tls_server.url, timeout=1.0)  # the server's CA not trusted
    try:
        with pytest.raises(SourceUnavailable, match="certificate verification") as info:
            await store.get("ep:v1:x")
        assert CA_VAR in str(info.value)
        assert "cannot be reached" not in str(info.value)
        assert PASSWORD not in str(info.value)
        with pytest.raises(SourceUnavailable, match="certificate verification") as sync_info:
            store.sync().get("ep:v1:x")
        assert CA_VAR in str(sync_info.value)
    finally:
        await store.aclose()


async def test_a_plain_redis_port_behind_rediss_still_says_cannot_be_reached(
    redis_server: RedisServer,
) -> None:
    """Not every TLS failure is a certificate one: a plain port answers no TLS at all."""
    url = redis_server.url.replace("redis://", "rediss://")
    store = RedisStore.from_url(url, timeout=1.0)
    try:
        with pytest.raises(SourceUnavailable) as info:
            await store.get("ep:v1:x")
        assert "certificate verification" not in str(info.value)
    finally:
        await store.aclose()


def _certificate_for_another_host(workdir: Path) -> str:
    """A CA and a server certificate (written over the server's) that names only
    ``evil.example``, not the 127.0.0.1 the store connects to. Returns the CA file."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("test CA"))
        .issuer_name(name("test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("evil.example"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("evil.example")]), False)
        .sign(ca_key, hashes.SHA256())
    )
    (workdir / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (workdir / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (workdir / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return str(workdir / "ca.pem")


class _AnotherHostsServer(RedisServer):
    def client(self) -> redis.Redis:
        # The harness's readiness PING only (the certificate names another host on purpose).
        return redis.Redis.from_url(
            self.url, socket_timeout=2, ssl_cert_reqs="none", ssl_check_hostname=False
        )


async def test_a_certificate_for_another_host_is_refused_by_both_clients() -> None:
    """The certificate chains to the trusted CA but names another host: the password must not
    be sent. redis-py before 6.0 checked no host name unless told (the blocking client the
    token cache and the consent grants use connected and wrote), and its asyncio client took
    ``ssl_cert_reqs`` only as a string (as an ``ssl.VerifyMode`` it never connected)."""
    server = _AnotherHostsServer(tls=True)
    ca_file = _certificate_for_another_host(server.workdir)
    server.start()
    store = RedisStore.from_url(server.url, ca_file=ca_file, timeout=1.0)
    try:
        # what redis-py is told, whatever its defaults (the extra allows redis-py 5.3)
        for pool in (store.client.connection_pool, store.sync().client.connection_pool):
            assert pool.connection_kwargs["ssl_cert_reqs"] == "required"
            assert pool.connection_kwargs["ssl_check_hostname"] is True
        with pytest.raises(SourceUnavailable, match="certificate verification") as info:
            await store.put("ep:v1:x", b"never", ttl=30)
        assert PASSWORD not in str(info.value)
        with pytest.raises(SourceUnavailable, match="certificate verification"):
            store.sync().put("ep:v1:x", b"never", ttl=30)
    finally:
        await store.aclose()
        server.stop()
