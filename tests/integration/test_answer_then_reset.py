"""A reset that comes after the server began its answer: the server read the ``tools/call`` and
may have run it, so the call is never sent again (``CallOutcomeUnknown``). Only a reset before
any byte of an answer (the race of a server closing an idle keep-alive connection as the request
is written) says the call was never read, and that one is still sent again, once.

Real sockets on 127.0.0.1 (plain and TLS, on a new and on a reused connection) under the MCP
client's own transport, and end to end: a real MCP server behind a TCP hop, the emulator and
MSAL behind ``EntraMCPTool``, the tool's executions counted on the server."""

from __future__ import annotations

import asyncio
import json
import select
import socket
import ssl
import struct
import threading
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import httpx2
import pytest

from _support.mcp_world import (
    agent_token,
    make_chain,
    mcp_behind,
)
from _support.mcp_world import mcp_scopes as scopes_of
from _support.servers import LoopbackHop
from entra_passthrough import bind_caller
from entra_passthrough.agent_framework import CallOutcomeUnknown, entra_mcp_tool
from entra_passthrough.mcp import CallAttempt, _CallGuard, call_attempt
from entra_passthrough.testing import EntraEmulator
from entra_passthrough.testing._world import User

CALL = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "x"}}
LIST = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
#: Where each request's body ends (httpx2 serialises ``json=`` with these last bytes).
CALL_END = b'"x"}}'
LIST_END = b'"tools/list"}'

#: What the server writes of its answer before it resets (``None``: it resets unread).
ANSWERS = {
    "unread": None,
    "status_begun": b"HTTP/1.1 2",
    "headers_begun": b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n",
}


def _abort(connection: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a reset (RST), not a FIN."""
    connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.close()


def _read_until(connection: socket.socket, end: bytes) -> bytes:
    received = b""
    for _ in range(1000):  # bounded; each recv is bounded by the socket's timeout
        if received.endswith(end):
            break
        chunk = connection.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


class _AnswerThenReset:
    """A server (a thread, blocking sockets, TLS when ``tls`` is given) that takes one
    connection. With ``reuse`` it first answers a ``tools/list`` in full on it (keep-alive), so
    the ``tools/call`` reuses a connection opened by another request. Then, once the call is
    there, it resets: unread (``answer`` None: it closes without reading the call, as a server
    closing an idle keep-alive connection as the request arrives), or after reading it whole and
    writing ``answer``, the beginning of an answer (a server that aborts the connection with
    SO_LINGER 0 part-way through its answer: it read the call and may have run it)."""

    def __init__(self, answer: bytes | None, *, reuse: bool, tls: ssl.SSLContext | None) -> None:
        self.answer = answer
        self.reuse = reuse
        self.tls = tls
        self.requests: list[bytes] = []
        self.connections = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._listener.settimeout(30)  # bounded
        try:
            raw, _ = self._listener.accept()
            self.connections += 1
            raw.settimeout(30)  # bounded
            # Written at once: under Nagle, the partial answer could wait for the ACK of the
            # TLS handshake's last bytes, and the reset would discard it unsent.
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = (
                self.tls.wrap_socket(raw, server_side=True) if self.tls is not None else raw
            )
            if self.reuse:
                self.requests.append(_read_until(connection, LIST_END))
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: 2\r\n\r\n{}"
                )
            if self.answer is None:
                readable, _, _ = select.select([connection], [], [], 30)
                assert readable
                _abort(connection)  # the call unread
                return
            self.requests.append(_read_until(connection, CALL_END))
            connection.sendall(self.answer)
            _abort(connection)
        finally:
            self._listener.close()

    def join(self) -> None:
        self._thread.join(30)


@pytest.mark.parametrize("reuse", [False, True], ids=["new_connection", "reused_connection"])
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
@pytest.mark.parametrize("answer", list(ANSWERS))
async def test_a_reset_after_the_answer_began_may_have_run_and_only_an_unread_one_never_left(
    answer: str, tls: bool, reuse: bool, idp: EntraEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server read the ``tools/call``, began its answer (part of the status line, or some
    headers) and reset the connection within ``RESET_WINDOW``: that is no unread request, the
    call may have run (``sent``, a transport error recorded). The same reset before any byte of
    an answer is the server closing without reading the call: "not sent (reset)". Both on a
    connection the call opened and on one it reused, over HTTP and TLS."""
    from entra_passthrough import mcp

    # Prompt however long a loaded machine takes to schedule the server thread: the verdict
    # under test must not rest on the clock.
    monkeypatch.setattr(mcp, "RESET_WINDOW", 60.0)
    server_tls: ssl.SSLContext | None = None
    verify: Any = True
    if tls:
        server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_tls.load_cert_chain(idp.server_cert_file, idp.server_key_file)
        verify = ssl.create_default_context(cafile=idp.ca_file)
    server = _AnswerThenReset(ANSWERS[answer], reuse=reuse, tls=server_tls)
    url = f"{'https' if tls else 'http'}://127.0.0.1:{server.port}/mcp"
    attempt: CallAttempt
    transport = _CallGuard(httpx2.AsyncHTTPTransport(verify=verify))
    async with httpx2.AsyncClient(transport=transport, timeout=30) as client:
        if reuse:
            # A connection-lifetime request (outside any call) opens the connection.
            listed = await client.post(url, json=LIST, headers={"Authorization": "Bearer t"})
            assert listed.status_code == 200
        with call_attempt() as attempt:
            reply = await client.post(url, json=CALL, headers={"Authorization": "Bearer t"})
    server.join()
    assert server.connections == 1  # reused when asked to: one connection only
    assert reply.json()["id"] == 5  # a JSON-RPC error for this request: the connection lives
    if ANSWERS[answer] is None:
        assert attempt.sent is False
        assert attempt.not_sent == "reset"
        assert attempt.transport_error is None
    else:
        assert server.requests[-1].endswith(CALL_END)  # the server read the whole call
        assert attempt.sent is True
        assert attempt.not_sent is None
        assert attempt.never_left is False
        assert attempt.transport_error is not None


class _CuttingHop(LoopbackHop):
    """A TCP hop in front of the MCP server that forwards every byte both ways, except for the
    first ``tools/call``: ``unread`` resets the client's connection as that call arrives, before
    forwarding it (the server never reads it); ``answer_begun`` forwards it, lets the server run
    it, passes on the first ``keep`` bytes of the server's answer, then resets the client's
    connection (what a server that aborts with SO_LINGER 0 part-way through its answer does)."""

    def __init__(
        self,
        behaviour: str,
        *,
        keep: int = 12,
        times: int = 1,
        refuse_after: bool = False,
        consent_after: bool = False,
    ) -> None:
        super().__init__()
        self.behaviour = behaviour
        self.keep = keep
        self.times = times  # how many ``tools/call`` requests are cut (the first ones)
        #: Answer every later ``tools/call`` with 401 ``invalid_token`` (not forwarded).
        self.refuse_after = refuse_after
        #: Answer every later ``tools/call`` with a URL elicitation (-32042: consent needed).
        self.consent_after = consent_after
        self.refused = 0
        self.upstream = 0
        self.cuts = 0
        self.passed_on = b""  # the part of an answer the client got before its reset

    def _own_answer(self, request: bytes) -> bytes:
        """The device's answer to a ``tools/call`` after the cut ones: a URL elicitation
        (``consent_after``: -32042, consent needed) or 401 ``invalid_token``."""
        if self.consent_after:
            call = json.loads(request.split(b"\r\n\r\n", 1)[1])
            elicitation = {
                "mode": "url",
                "message": "Sign in to the records backend",
                "url": "https://login.example.com/consent?x=1",
                "elicitationId": "e1",
            }
            error = {
                "code": -32042,
                "message": "URL elicitation required",
                "data": {"elicitations": [elicitation]},
            }
            body = json.dumps({"jsonrpc": "2.0", "id": call["id"], "error": error}).encode()
            head = b"HTTP/1.1 200 OK\r\n"
        else:
            body = b'{"error":"invalid_token"}'
            head = (
                b'HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer error="invalid_token"\r\n'
            )
        return (
            head
            + b"content-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(body)
            + body
        )

    def _reset(self, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cut = asyncio.Event()  # this connection carries the call whose answer is cut
        answers: asyncio.Task[None] | None = None
        upstream: asyncio.StreamWriter | None = None

        async def relay_answers(source: asyncio.StreamReader) -> None:
            try:
                while data := await source.read(65536):
                    if cut.is_set():
                        self.passed_on = data[: self.keep]
                        writer.write(self.passed_on)
                        await writer.drain()
                        self._reset(writer)
                        return
                    writer.write(data)
                    await writer.drain()
            except OSError:
                pass  # the client went away
            writer.close()

        try:
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.upstream)
            answers = asyncio.create_task(relay_answers(up_reader))
            while data := await reader.read(65536):
                if (
                    (self.consent_after or self.refuse_after)
                    and self.cuts >= self.times
                    and b"tools/call" in data
                ):
                    # The device answers the call itself: not forwarded.
                    self.refused += 1
                    writer.write(self._own_answer(data))
                    await writer.drain()
                    continue
                if self.cuts < self.times and b"tools/call" in data:
                    self.cuts += 1
                    if self.behaviour == "unread":
                        self._reset(writer)  # the call is never forwarded
                        break
                    cut.set()
                upstream.write(data)
                await upstream.drain()
        except (OSError, asyncio.CancelledError):
            pass  # a side went away, or the test is over
        finally:
            if answers is not None:
                if cut.is_set():
                    # The cut answer's relay ends by itself once it passed its bytes on.
                    with suppress(asyncio.CancelledError, TimeoutError, OSError):
                        await asyncio.wait_for(answers, 10)
                else:
                    answers.cancel()
            if upstream is not None:
                upstream.transport.abort()
            writer.transport.abort()


@pytest.mark.parametrize("behaviour", ["answer_begun", "unread"])
async def test_a_call_whose_answer_began_before_a_reset_runs_once_and_is_never_resent(
    behaviour: str, idp: EntraEmulator, users: list[User], monkeypatch: pytest.MonkeyPatch
) -> None:
    """End to end, the tool's executions counted on the server. The server ran the call and
    began answering when the connection was reset: the call ran once and fails
    ``CallOutcomeUnknown`` ("may have run"), never sent again. A reset before the server read
    the call: sent again once, it runs once and answers."""
    from entra_passthrough import mcp

    monkeypatch.setattr(mcp, "RESET_WINDOW", 60.0)  # prompt however loaded the machine is
    hop = _CuttingHop(behaviour)
    await hop.start()
    executions: list[tuple[str, str]] = []
    server = mcp_behind(idp, hop.port, executions)
    hop.upstream = server.port
    tool = entra_mcp_tool(
        "records", f"http://127.0.0.1:{hop.port}/mcp", chain=make_chain(idp), scopes=scopes_of(idp)
    )
    user = users[21]
    who = f"{user.oid}|cut"
    outcome: Any = None
    failure: BaseException | None = None
    try:
        with bind_caller(token=agent_token(idp, user)):
            try:
                outcome = await tool.call_tool("whoami", who=who)
            except CallOutcomeUnknown as exc:
                failure = exc
    finally:
        await tool.close()
        server.stop()
        await hop.aclose()
    assert hop.cuts == 1
    assert Counter(name for name, _ in executions) == {who: 1}  # never twice
    if behaviour == "answer_begun":
        assert hop.passed_on.startswith(b"HTTP/1.1 ")  # the client got part of an answer
        assert failure is not None, f"the call was sent again and answered: {outcome!r}"
        assert "may have run" in str(failure)
    else:
        assert failure is None
        parts = outcome if isinstance(outcome, list) else [outcome]
        assert user.oid in " ".join(str(getattr(part, "text", part)) for part in parts)


@asynccontextmanager
async def _tool_behind(
    idp: EntraEmulator, hop: _CuttingHop, executions: list[tuple[str, str]]
) -> AsyncIterator[Any]:
    """An ``EntraMCPTool`` for a real MCP server behind ``hop`` (the server counting each
    execution in ``executions``); everything closed at the end."""
    await hop.start()
    server = mcp_behind(idp, hop.port, executions)
    hop.upstream = server.port
    tool = entra_mcp_tool(
        "records", f"http://127.0.0.1:{hop.port}/mcp", chain=make_chain(idp), scopes=scopes_of(idp)
    )
    try:
        yield tool
    finally:
        await tool.close()
        server.stop()
        await hop.aclose()


async def test_a_call_reset_again_after_its_resend_is_not_sent_a_third_time(
    idp: EntraEmulator, users: list[User], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device in front of the server that forwards every ``tools/call`` and then resets the
    client's connection before any answer byte (an L7 gateway answering an upstream failure
    with a reset): the first reset is taken as "never read" (the documented assumption) and
    the call is sent once more; the second reset says the assumption does not hold here. The
    call fails ``CallOutcomeUnknown`` naming the switch, after two runs, never one run per
    resend for the whole retry window (it ran 17-20 times), and never "it did not run"."""
    from entra_passthrough import mcp

    monkeypatch.setattr(mcp, "RESET_WINDOW", 60.0)  # prompt however loaded the machine is
    hop = _CuttingHop("answer_begun", keep=0, times=1000)
    executions: list[tuple[str, str]] = []
    user = users[22]
    who = f"{user.oid}|forwarded"
    async with _tool_behind(idp, hop, executions) as tool:
        with bind_caller(token=agent_token(idp, user)), pytest.raises(CallOutcomeUnknown) as raised:
            await tool.call_tool("whoami", who=who)
    assert hop.passed_on == b""  # no answer byte reached the client: resets before an answer
    assert Counter(name for name, _ in executions) == {who: 2}  # the first run and one resend
    said = str(raised.value)
    assert "may have run" in said, said
    assert "reset again" in said, said
    assert "ENTRA_PASSTHROUGH_MCP_RESEND_ON_RESET=false" in said, said
    assert "did not run" not in said, said
    assert "not sent a third time (it may have run twice)" in said, said
    assert "never runs twice" not in said, said  # it may have: the one resend is allowed


async def test_a_call_reset_then_closed_before_its_resend_may_have_run(
    idp: EntraEmulator, users: list[User], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device forwards the call (it runs), resets the connection, and then refuses
    connections; the tool is closed (a host shutting down) while it tries to send the call
    again. The call may have run: ``CallOutcomeUnknown``, never "it did not run" (the close
    path said that, as if the reset had been the server's)."""
    from entra_passthrough import mcp

    monkeypatch.setattr(mcp, "RESET_WINDOW", 60.0)  # prompt however loaded the machine is
    hop = _CuttingHop("answer_begun", keep=0, times=1)
    executions: list[tuple[str, str]] = []
    user = users[23]
    who = f"{user.oid}|closed"
    async with _tool_behind(idp, hop, executions) as tool:
        with bind_caller(token=agent_token(idp, user)):
            call = asyncio.ensure_future(tool.call_tool("whoami", who=who))
            for _ in range(400):  # bounded: until the device has the call
                if hop.cuts or call.done():
                    break
                await asyncio.sleep(0.025)
            assert hop._server is not None
            hop._server.close()  # no new connection from now on: the resend cannot go out
            for _ in range(400):  # bounded: until the call ran on the server
                if executions or call.done():
                    break
                await asyncio.sleep(0.025)
            await asyncio.sleep(0.5)  # the tool is trying to send it again
            await tool.close()
            with pytest.raises(CallOutcomeUnknown) as raised:
                await asyncio.wait_for(call, 60)
    assert Counter(name for name, _ in executions) == {who: 1}
    said = str(raised.value)
    assert "may have run" in said, said
    assert "closed (its agent or the host shutting down) before it was sent again" in said, said
    assert "did not run" not in said, said


async def test_a_call_reset_then_refused_on_its_resend_may_have_run(
    idp: EntraEmulator, users: list[User], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device forwards the call (it runs), resets the connection, and then answers the resend
    401 ``invalid_token`` (a gateway refusing the token): the call may have run, and the error
    says so with the refusal (it said "the call did not run")."""
    from entra_passthrough import mcp

    monkeypatch.setattr(mcp, "RESET_WINDOW", 60.0)  # prompt however loaded the machine is
    hop = _CuttingHop("answer_begun", keep=0, times=1, refuse_after=True)
    executions: list[tuple[str, str]] = []
    user = users[24]
    who = f"{user.oid}|refused"
    async with _tool_behind(idp, hop, executions) as tool:
        with bind_caller(token=agent_token(idp, user)), pytest.raises(CallOutcomeUnknown) as raised:
            await tool.call_tool("whoami", who=who)
    assert hop.refused >= 1  # the resend went out and was refused
    assert Counter(name for name, _ in executions) == {who: 1}
    said = str(raised.value)
    assert "may have run" in said, said
    assert "refused the token" in said, said
    assert "did not run" not in said, said


async def test_a_call_reset_then_asked_for_consent_on_its_resend_may_have_run(
    idp: EntraEmulator, users: list[User], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resend of a reset call is answered with a consent link (a URL elicitation): the
    call may have run, so the user is not told "consent, then call again" (which would run
    it once more); the next call asks for consent again. It came back as a plain consent
    request."""
    from entra_passthrough import mcp

    monkeypatch.setattr(mcp, "RESET_WINDOW", 60.0)  # prompt however loaded the machine is
    hop = _CuttingHop("answer_begun", keep=0, times=1, consent_after=True)
    executions: list[tuple[str, str]] = []
    user = users[25]
    who = f"{user.oid}|consent"
    async with _tool_behind(idp, hop, executions) as tool:
        with bind_caller(token=agent_token(idp, user)), pytest.raises(CallOutcomeUnknown) as raised:
            await tool.call_tool("whoami", who=who)
    assert hop.refused == 1  # the resend went out and was answered with the link
    assert Counter(name for name, _ in executions) == {who: 1}
    said = str(raised.value)
    assert "may have run" in said, said
    assert "consent was asked for" in said, said
