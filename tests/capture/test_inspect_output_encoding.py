"""``entra-passthrough inspect TOKEN`` writes a claim the output's encoding cannot hold (a
Japanese name under cp1252, what Windows uses for output redirected to a file, or ascii)
escaped, where it stopped with a UnicodeEncodeError traceback; the real command, in a
subprocess with that encoding."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from _support.tokens import unsigned_jwt

NAME = "山田 太郎"


@pytest.mark.parametrize("encoding", ["cp1252", "ascii", "latin-1"])
def test_a_claim_the_output_cannot_encode_is_escaped(encoding: str) -> None:
    token = unsigned_jwt(aud="api://x", oid="o1", tid="t1", name=NAME, scp="access_as_user")
    done = subprocess.run(
        [sys.executable, "-m", "entra_passthrough", "inspect", token],
        env={**os.environ, "PYTHONIOENCODING": encoding},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-300:]
    assert b"Traceback" not in done.stderr
    out = done.stdout.decode(encoding)
    assert "\\u5c71\\u7530 \\u592a\\u90ce" in out  # shown, escaped
    assert "Which sources could use it:" in out  # and the rest is there


def test_utf8_output_shows_the_name_as_it_is() -> None:
    token = unsigned_jwt(aud="api://x", oid="o1", tid="t1", name=NAME, scp="access_as_user")
    done = subprocess.run(
        [sys.executable, "-m", "entra_passthrough", "inspect", token],
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0
    assert NAME in done.stdout.decode("utf-8")
