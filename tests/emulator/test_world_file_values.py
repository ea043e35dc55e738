"""A world the emulator cannot run as its author meant is refused when it is built (a world file,
or ``EntraEmulator(world=...)``), with the entry and the fix named: no tenant (which crashed with
an IndexError traceback), and values that loaded silently (a grant naming no app or user, a role
the API does not define, token version 3, an unknown kind, an agent identity without a
blueprint, two apps with one client id, a tenant id that is not a GUID)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from entra_passthrough import ConfigurationError
from entra_passthrough.testing import EntraEmulator, Grant, RoleAssignment, World

SAME_ID = "11111111-1111-1111-1111-111111111111"
AZ = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"


@pytest.mark.parametrize(
    ("text", "named", "says"),
    [
        ("include_defaults = false\n", "no tenant", "[[tenants]]"),
        ('include_defaults = false\n[[apps]]\nname = "x"\n', "no tenant", "[[tenants]]"),
        ('include_defaults = false\n[[users]]\nname = "x"\n', "no tenant", "[[tenants]]"),
        (
            '[[grants]]\nclient = "agnet"\nresource = "mcp"\nscopes = ["access_as_user"]\n'
            'user = "carol"\n',
            "grants[0].client",
            "did you mean 'agent'",
        ),
        (
            '[[grants]]\nclient = "agent"\nresource = "mcp"\nscopes = ["access_as_user"]\n'
            'user = "karol"\n',
            "grants[0].user",
            "did you mean 'carol'",
        ),
        (
            '[[grants]]\nclient = "agent"\nresource = "mpc"\nscopes = ["access_as_user"]\n',
            "grants[0].resource",
            "did you mean 'mcp'",
        ),
        (
            '[[grants]]\nclient = "agent"\nresource = "mcp"\nscopes = ["access_as_usr"]\n',
            "grants[0].scopes",
            "did you mean 'access_as_user'",
        ),
        (
            '[[role_assignments]]\nclient = "agent"\nresource = "mcp"\nrole = "Tools.Cal"\n',
            "role_assignments[0].role",
            "did you mean 'Tools.Call'",
        ),
        (
            '[[role_assignments]]\nclient = "agent-mj"\nresource = "mcp"\nrole = "Tools.Call"\n',
            "role_assignments[0].client",
            "did you mean 'agent-mi'",
        ),
        (
            '[[apps]]\nname = "x"\napi = true\naccess_token_version = 3\n',
            "apps[0]",
            "not 1 or 2",
        ),
        ('[[apps]]\nname = "x"\nkind = "robot"\n', "apps[0]", "unknown kind 'robot'"),
        (
            '[[apps]]\nname = "x"\nkind = "agent_identity"\nsecret = false\n',
            "apps[0]",
            "needs its blueprint",
        ),
        (
            '[[apps]]\nname = "x"\nkind = "agent_identity"\nblueprint = "mcp"\nsecret = false\n',
            "apps[0]",
            "'mcp' is not an agent blueprint",
        ),
        ('[[apps]]\nname = "x"\nblueprint = "blueprint"\n', "apps[0]", "only an agent identity"),
        (
            f'[[apps]]\nname = "a1"\nclient_id = "{SAME_ID}"\n'
            f'[[apps]]\nname = "a2"\nclient_id = "{SAME_ID}"\n',
            "app 'a2'",
            "also app 'a1'",
        ),
        ('[[apps]]\nname = "x"\nclient_id = "my-client"\n', "apps[0]", "not a GUID"),
        ('[[tenants]]\nname = "t2"\nid = "not-a-guid"\n', "tenants[0]", "not a GUID"),
        (
            '[[tenants]]\nname = "t2"\nid = "72F988BF-86F1-41AF-91AB-2D7CD011DB47"\n',
            "tenants[0]",
            "'72f988bf-86f1-41af-91ab-2d7cd011db47'",
        ),
        ('[[users]]\nname = "zoe"\nmfa_required_for = ["mpc"]\n', "mfa_required_for", "'mcp'"),
        ('[[users]]\nname = "zoe"\nblocked_for = ["mpc"]\n', "blocked_for", "'mcp'"),
        (
            '[[apps]]\nname = "x"\napi = true\nscope = "S"\npre_authorized = ["agnet"]\n',
            "apps[0].pre_authorized",
            "did you mean 'agent'",
        ),
        (
            '[[apps]]\nname = "x"\nassignment_required = true\nassigned = ["alcie"]\n',
            "apps[0].assigned",
            "did you mean 'alice'",
        ),
    ],
)
def test_a_wrong_value_is_refused_with_its_place_and_fix(
    tmp_path: Path, text: str, named: str, says: str
) -> None:
    path = tmp_path / "world.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError) as info:
        World.from_file(path)
    message = str(info.value)
    assert named in message
    assert says in message
    assert info.value.fix


def _emulator(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "entra_passthrough", "emulator", "--port", "0", "--config", path],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("include_defaults = false\n", "has no tenant"),
        ('include_defaults = false\n[[apps]]\nname = "x"\n', "has no tenant"),
        (
            '[[grants]]\nclient = "agnet"\nresource = "mcp"\nscopes = ["access_as_user"]\n',
            "grants[0].client: 'agnet' is not an app of this world (did you mean 'agent'?)",
        ),
    ],
)
def test_the_emulator_command_says_it_in_one_line(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "world.toml"
    path.write_text(text)
    done = _emulator(path)
    assert done.returncode == 2, done.stderr[-400:]
    assert "Traceback" not in done.stderr
    assert "Ready" not in done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("entra-passthrough emulator: cannot load")
    assert says in lines[0]
    assert "Fix:" in lines[0]


def test_an_emulator_given_a_world_without_a_tenant_refuses_it() -> None:
    with pytest.raises(ConfigurationError, match="no tenant"):
        EntraEmulator(world=World(tenants=()))


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda w: w.with_grant(Grant("no-such-app", w.app("mcp").client_id, ("x",))), "client"),
        (
            lambda w: w.with_grant(
                Grant(w.app("agent").client_id, w.app("mcp").client_id, ("x",), user="karol")
            ),
            "user 'karol'",
        ),
        (
            lambda w: w.with_role_assignment(
                RoleAssignment(w.app("agent").client_id, w.app("mcp").client_id, "Tools.Cal")
            ),
            "no app role 'Tools.Cal'",
        ),
    ],
)
def test_an_emulator_given_a_world_naming_what_it_lacks_refuses_it(
    change: Callable[[Any], World], says: str
) -> None:
    with pytest.raises(ConfigurationError, match="emulator world") as info:
        EntraEmulator(world=change(World.default()))
    assert says in str(info.value)


def test_apps_may_name_each_other_in_any_order(tmp_path: Path) -> None:
    # The agent identity before its blueprint, a pre-authorized client before it is defined:
    # both resolve (an agent identity's blueprint used to be dropped silently in this order).
    path = tmp_path / "world.toml"
    path.write_text(
        '[[apps]]\nname = "reports-api"\napi = true\nscope = "Reports.Read"\n'
        f'pre_authorized = ["reports-client", "{AZ}"]\n'
        '[[apps]]\nname = "reports-agent"\nkind = "agent_identity"\n'
        'blueprint = "reports-blueprint"\nsecret = false\n'
        '[[apps]]\nname = "reports-blueprint"\nkind = "agent_blueprint"\nscope = "access_as_user"\n'
        '[[apps]]\nname = "reports-client"\n'
        '[[grants]]\nclient = "reports-client"\nresource = "reports-api"\n'
        'scopes = ["reports.read"]\nuser = "Alice"\n'
    )
    world = World.from_file(path)
    names = ("reports-api", "reports-agent", "reports-blueprint", "reports-client")
    apps = [world.app(n) for n in names]
    assert None not in apps
    api, agent, blueprint, client = (a for a in apps if a is not None)
    assert agent.blueprint_id == blueprint.client_id
    assert api.pre_authorized == (client.client_id, AZ)  # a client id from outside is kept
    assert world.grants[-1].user == "alice"  # the name the emulator compares
    with EntraEmulator(world=world) as idp:
        assert idp.tenant_id == world.tenants[0].id
