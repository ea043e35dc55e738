"""A world file with a misspelt key or a wrong shape is refused with the key named (and the
closest known key), never loaded with the key ignored (the emulator would then refuse what its
author believes configured) or failed as a bare TypeError."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from entra_passthrough.testing import World

CLIENT = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"


@pytest.mark.parametrize(
    ("text", "named", "hint"),
    [
        (
            f'[[apps]]\nname = "reports"\napi = true\npre_authorised = ["{CLIENT}"]\n',
            "apps[0]",
            "pre_authorized",
        ),
        ('[[apps]]\nname = "reports"\napi = true\nscops = "Reports.Read"\n', "'scops'", "scopes"),
        ('[[users]]\nname = "zoe"\nmfa_required = ["mcp"]\n', "users[0]", "mfa_required_for"),
        ('tenant = "contoso"\n', "the top level", "tenants"),
        ("[lifetimes]\naccess_tokens = 60\n", "lifetimes", "access_token"),
        (
            '[[apps]]\nname = "x"\n[[apps.federated_credentials]]\n'
            'subject = "mi"\naudience = "x"\n',
            "federated_credentials[0]",
            "audiences",
        ),
    ],
)
def test_a_misspelt_key_is_named_with_the_closest_one(
    tmp_path: Path, text: str, named: str, hint: str
) -> None:
    path = tmp_path / "world.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match="unknown key") as info:
        World.from_file(path)
    assert named in str(info.value)
    assert f"did you mean {hint!r}" in str(info.value)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("tenants = 5\n", "tenants must be a list of tables"),
        ("apps = [1]\n", "apps[0] must be a table"),
        ('[[grants]]\nclient = "agent"\n', "grants[0] needs resource"),
        ('[[users]]\nupn = "a@b"\n', "users[0] needs name"),
        ('[lifetimes]\naccess_token = "soon"\n', "lifetimes.access_token must be a number"),
        ("lifetimes = 3\n", "lifetimes must be a table"),
    ],
)
def test_a_wrong_shape_is_named(tmp_path: Path, text: str, named: str) -> None:
    path = tmp_path / "world.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match="emulator config") as info:
        World.from_file(path)
    assert named in str(info.value)


def test_the_emulator_command_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "world.toml"
    path.write_text('[[apps]]\nname = "reports"\napi = true\nscops = "Reports.Read"\n')
    done = subprocess.run(
        [sys.executable, "-m", "entra_passthrough", "emulator", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "unknown key 'scops'" in done.stderr
    assert "Traceback" not in done.stderr


def test_every_documented_key_still_loads(tmp_path: Path) -> None:
    path = tmp_path / "world.json"
    path.write_text(
        """{"include_defaults": true, "_comment": "skipped, as every key that starts with _",
        "tenants": [{"name": "fabrikam", "user_consent": false}],
        "managed_identities": [{"name": "agent-mi", "tenant": "contoso"}],
        "apps": [{"name": "reports", "api": true, "scope": "Reports.Read", "roles": ["R.All"],
                  "pre_authorized": ["agent"], "admin_scopes": ["Reports.Admin"],
                  "federated_credentials": [{"name": "fic", "subject": "agent-mi"}]}],
        "users": [{"name": "zoe", "mfa_required_for": ["reports"], "guest": false}],
        "grants": [{"client": "agent", "resource": "reports", "scopes": ["Reports.Read"]}],
        "role_assignments": [{"client": "agent", "resource": "reports", "role": "R.All"}],
        "lifetimes": {"access_token": 60, "code": 30}}"""
    )
    world = World.from_file(path)
    assert world.app("reports") is not None
    assert world.lifetimes.access_token == 60
