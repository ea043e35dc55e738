"""Framework compatibility: the integration tests against the oldest and the newest supported
agent-framework-core, mcp and redis-py (docs/compatibility.md).

    nox -s compat            # both ends
    nox -s "compat(end='newest')"
    nox -s compat -- -x -k isolation   # arguments after -- go to pytest
    nox -s next              # the newest releases beyond the pins (may fail: not supported)

Each session is a fresh venv with this repository (editable) and its 'agent-framework', 'mcp',
'redis' and 'testing' extras, then the versions of that end pinned exactly. Widen a range in
pyproject.toml only after its new end passes here, and update the table in the docs.
"""

from __future__ import annotations

import nox

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["compat"]
nox.options.reuse_existing_virtualenvs = True

# The ends of each supported range (pyproject.toml's extras), exact versions from PyPI.
ENDS = {
    "oldest": {"agent-framework-core": "1.23.0", "mcp": "2.2.0", "redis": "5.3.1"},
    "newest": {"agent-framework-core": "1.26.0", "mcp": "2.3.0", "redis": "8.2.0"},
}
# The newest releases on PyPI beyond the pins: `nox -s next` shows whether a range can widen.
# In December 2026 there is none: agent-framework-core 1.26.0 (1.24 and 1.25 were never
# released) and mcp 2.3.0 are the newest ends above, so `next` runs what `compat(end='newest')`
# runs until a newer release is named here.
NEXT = {"agent-framework-core": "1.26.0", "mcp": "2.3.0"}
# The tests that exercise agent-framework and mcp end to end (against the emulator, real MCP
# servers on loopback, real ResponsesHostServer hosts), and redis-py against real redis-server
# processes (redis-py before 6.0 had other TLS defaults: tests/scale_out/test_tls_errors.py).
TESTS = ["tests/integration", "tests/server", "tests/demo", "tests/scale_out"]
TEST_DEPS = ["pytest>=8", "pytest-asyncio>=0.24", "pytest-timeout>=2.3", "hypothesis>=6.100"]


@nox.session
@nox.parametrize("end", list(ENDS))
def compat(session: nox.Session, end: str) -> None:
    _run(session, ENDS[end])


@nox.session
def next(session: nox.Session) -> None:  # the session's name on the command line
    _run(session, NEXT)


def _run(session: nox.Session, versions: dict[str, str]) -> None:
    pins = [f"{name}=={version}" for name, version in versions.items()]
    session.install("-e", ".[agent-framework,mcp,redis,testing]", *TEST_DEPS)
    # Second step: an end outside the current pins (a candidate for widening) replaces the
    # resolved version; pip reports the conflict with the pin and installs it.
    session.install(*pins)
    session.run("python", "-m", "pip", "check", success_codes=[0, 1])  # shows any conflict
    for name in versions:
        session.run(
            "python", "-c", f"import importlib.metadata as m; print({name!r}, m.version({name!r}))"
        )
    session.run("pytest", "-q", "-p", "no:cacheprovider", *TESTS, *session.posargs)
