"""A core-only install (the wheel, no extra) breaks nothing: not the user's tests, not the CLI.

Each test fails on the layout this replaced: the pytest11 plugin imported starlette at start-up
(every pytest run in a core-only project exited 3), ``demo --help``/``emulator --help`` printed a
``ModuleNotFoundError`` traceback, ``broker --help`` named the wrong extra, and
``import entra_passthrough.testing`` raised a raw ``ModuleNotFoundError``.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import NamedTuple

import pytest

from entra_passthrough.cli import _COMMANDS

from ._venv import Venv, check, run

pytestmark = pytest.mark.slow

OPTIONAL = {"starlette", "uvicorn", "mcp", "agent-framework-core", "redis", "aiohttp"}


def test_the_core_install_has_no_optional_package(core_venv: Venv) -> None:
    installed = core_venv.installed()
    assert "entra-passthrough" in installed
    assert not installed & OPTIONAL, installed & OPTIONAL


def _project(tmp_path: Path, test_body: str) -> Path:
    project = tmp_path / "someone_elses_project"
    project.mkdir()
    (project / "pyproject.toml").write_text(
        textwrap.dedent(
            """\
            [project]
            name = "unrelated"
            version = "1"
            [tool.pytest.ini_options]
            addopts = "-p no:cacheprovider --strict-markers"
            filterwarnings = ["error"]
            """
        )
    )
    (project / "test_unrelated.py").write_text(textwrap.dedent(test_body))
    return project


def test_pytest_runs_in_an_unrelated_project(core_venv: Venv, tmp_path: Path) -> None:
    project = _project(
        tmp_path,
        """\
        import sys

        def test_plain():
            assert 1 + 1 == 2

        def test_loading_the_plugin_imported_nothing_optional(pytestconfig):
            assert pytestconfig.pluginmanager.has_plugin("entra_emulator")
            assert "entra_passthrough" not in sys.modules  # not even the library
            assert "starlette" not in sys.modules
        """,
    )
    proc = run([core_venv.python, "-m", "pytest", "-q"], cwd=project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 passed" in proc.stdout


def test_the_fixtures_say_what_they_are(core_venv: Venv, tmp_path: Path) -> None:
    # `pytest --fixtures` in someone else's project lists the plugin's fixtures with a line
    # each, not "no docstring available".
    project = _project(tmp_path, "def test_nothing():\n    pass\n")
    proc = run([core_venv.python, "-m", "pytest", "--fixtures"], cwd=project)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    listing = proc.stdout[proc.stdout.index("entra_emulator") :]
    assert "local Entra ID emulator" in listing.split("entra_emulator_fresh")[0]
    assert "no docstring available" not in listing.split("\n\n", 2)[0]


def test_the_fixture_without_the_extra_names_it(core_venv: Venv, tmp_path: Path) -> None:
    project = _project(
        tmp_path,
        """\
        def test_uses_the_emulator(entra_emulator):
            pass

        def test_other():
            pass
        """,
    )
    proc = run([core_venv.python, "-m", "pytest", "-q"], cwd=project)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # one error, not an internal error (3)
    assert "1 passed, 1 error" in proc.stdout
    assert "MissingExtraError" in proc.stdout
    assert "pip install 'entra-passthrough[testing]'" in proc.stdout


#: Runs ``entra_passthrough.cli.main`` with each argv of ``sys.argv[1]`` (a JSON list) in this
#: one interpreter, and prints ``[exit status, stdout, stderr]`` of each (JSON): the
#: subcommands' ``--help`` and ``--version`` in one fresh core-only process, not one each.
_COMMANDS_RUNNER = """\
import contextlib, io, json, sys
from entra_passthrough.cli import main
answers = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # a command's own argparse (--help): how the process ends
            code = 0 if exc.code is None else exc.code
    answers.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(answers))
"""


class Answer(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def subcommands(core_venv: Venv) -> dict[str, Answer]:
    """``<name> --help`` and ``<name> --version`` of every subcommand (keyed by the argv joined
    with spaces), run through the CLI's ``main`` in one fresh interpreter of the core install;
    that interpreter printed nothing else and exited 0."""
    argvs = [[name, option] for name in _COMMANDS for option in ("--help", "--version")]
    proc = run([core_venv.python, "-c", _COMMANDS_RUNNER, json.dumps(argvs)])
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    answers = json.loads(proc.stdout)
    return {" ".join(argv): Answer(*answer) for argv, answer in zip(argvs, answers, strict=True)}


@pytest.fixture(scope="module")
def top_version(core_venv: Venv) -> str:
    """What the installed ``entra-passthrough --version`` prints (a process of its own)."""
    return check([core_venv.bin("entra-passthrough"), "--version"])


@pytest.mark.parametrize(
    "argv", [["--help"], *([name, "--help"] for name in _COMMANDS)], ids=" ".join
)
def test_every_help_works_without_extras(
    core_venv: Venv, subcommands: dict[str, Answer], argv: list[str]
) -> None:
    # The installed script itself for the top level; the subcommands' help through its main,
    # in one fresh interpreter of the core install (the subcommands fixture).
    if argv == ["--help"]:
        proc = run([core_venv.bin("entra-passthrough"), *argv])
    else:
        proc = subcommands[" ".join(argv)]
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: entra-passthrough")
    assert proc.stderr == ""


def test_version(core_venv: Venv) -> None:
    out = check([core_venv.bin("entra-passthrough"), "--version"])
    meta = check(
        [
            core_venv.python,
            "-c",
            "import importlib.metadata as m; print(m.version('entra-passthrough'))",
        ]
    )
    assert out.strip() == f"entra-passthrough {meta.strip()}"
    # The same command where the script is not on PATH.
    assert check([core_venv.python, "-m", "entra_passthrough", "--version"]) == out
    init = check(
        [core_venv.python, "-c", "import entra_passthrough; print(entra_passthrough.__version__)"]
    )
    assert init.strip() == meta.strip()


@pytest.mark.parametrize("name", list(_COMMANDS))
def test_every_subcommand_answers_version_without_extras(
    subcommands: dict[str, Answer], top_version: str, name: str
) -> None:
    proc = subcommands[f"{name} --version"]
    assert proc.returncode == 0, proc.stderr
    top = top_version
    assert proc.stdout == top
    assert proc.stderr == ""


@pytest.mark.parametrize(
    ("argv", "extra"),
    [
        (["demo"], "demo"),
        (["emulator"], "testing"),
        (["broker", "--config", "broker.json", "--insecure-http"], "consent"),
    ],
)
def test_a_missing_extra_is_one_line_naming_it(
    core_venv: Venv, tmp_path: Path, argv: list[str], extra: str
) -> None:
    proc = run([core_venv.bin("entra-passthrough"), *argv], cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert f"pip install 'entra-passthrough[{extra}]'" in proc.stderr
    assert proc.stdout == ""


_IMPORT = """\
import importlib, json, sys
out = {}
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        out[name] = [type(exc).__name__, getattr(exc, "extra", None), str(exc)]
    else:
        out[name] = None
print(json.dumps(out))
"""


def test_integrations_raise_missing_extra_alike(core_venv: Venv) -> None:
    expected = {
        "entra_passthrough.testing": "testing",
        "entra_passthrough.consent": "consent",
        "entra_passthrough.agent_framework": "agent-framework",
        "entra_passthrough.mcp": "mcp",
        "entra_passthrough.server": "mcp",
        "entra_passthrough.redis": "redis",
    }
    found = json.loads(check([core_venv.python, "-c", _IMPORT, "entra_passthrough", *expected]))
    assert found.pop("entra_passthrough") is None  # the core imports
    for module, extra in expected.items():
        kind, got_extra, message = found[module]
        assert (kind, got_extra) == ("MissingExtraError", extra), (module, found[module])
        assert f"pip install 'entra-passthrough[{extra}]'" in message
