"""``ENTRA_PASSTHROUGH_TELEMETRY_SALT`` is read the first time a user hash is made, not when the
library is imported (docs/configuration.md, docs/observability.md): an application that loads
its settings after its imports (python-dotenv, a settings module) gets the salt it set, so every
replica's hashes of one user agree. Once read it is kept for the process.

A fresh interpreter each time: the salt is per process, and this one may have made a hash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent(
    """
    import hashlib, json, os, time

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    # Imported first, as an application does before it loads its settings.
    from entra_passthrough import (
        IdentityKind, Policy, TokenChain, TokenResult, UserKey, bind_caller,
    )

    class Fixed:
        name = "fixed"
        kind = IdentityKind.USER

        def cache_partition(self, request):
            return ("fixed",)

        def get_token(self, request):
            return TokenResult("opaque-value", time.time() + 3600, IdentityKind.USER, "fixed")

        async def get_token_async(self, request):
            return self.get_token(request)

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    chain = TokenChain([Fixed()], policy=Policy.USER_ONLY)
    hashes = []
    for salt, scope in (("loaded-after-import", "api://a/.default"),
                        ("changed-later", "api://b/.default")):
        os.environ["ENTRA_PASSTHROUGH_TELEMETRY_SALT"] = salt
        exporter.clear()
        with bind_caller(user_id="platform-user-1"):
            chain.get_token([scope])
        hashes.append(sorted({
            str(dict(s.attributes or {}).get("entra_passthrough.user"))
            for s in exporter.get_finished_spans()
            if s.name == "entra_passthrough.acquire"
        }))
    key = UserKey.for_platform_user("platform-user-1").value.encode()
    print(json.dumps({
        "hashes": hashes,
        "first": hashlib.sha256(b"loaded-after-import" + key).hexdigest()[:16],
    }))
    """
)


def test_salt_set_after_import_is_the_one_used_and_then_kept() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ENTRA_PASSTHROUGH_TELEMETRY_SALT"}
    run = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    first, later = out["hashes"]
    # The salt set after the import, not a random one chosen at import.
    assert first == [out["first"]], out
    # Read once: a change later in the process does not split one user into two hashes.
    assert later == first, out
