"""docs/compatibility.md's table says what pyproject.toml pins and what the tests run: each row's
allowed range is the pin of its extra, the framework ends are noxfile.py's, and the newest tested
version is the one this suite runs on."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _table() -> dict[str, dict[str, str]]:
    text = (ROOT / "docs" / "compatibility.md").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows: dict[str, dict[str, str]] = {}
    for line in lines[1:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) != len(header) or set(cells[0]) <= {"-", " "}:
            if rows:
                break  # the end of the first table
            continue
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


def _pins() -> dict[str, set[str]]:
    """Package -> the specifiers pyproject.toml gives it (core and every extra)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    pins: dict[str, set[str]] = {}
    for requirement in requirements:
        m = re.match(r"^([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?\s*([^;#]*)", requirement)
        assert m, requirement
        if m.group(1) == "entra-passthrough":
            continue
        spec = ",".join(part.strip() for part in m.group(2).split(",") if part.strip())
        pins.setdefault(m.group(1).lower(), set()).add(spec)
    pins["python"] = {project["requires-python"]}
    return pins


def test_every_row_is_the_pin() -> None:
    pins = _pins()
    table = _table()
    assert {"agent-framework-core", "mcp", "msal", "azure-identity", "httpx2", "httpx"} <= set(
        table
    )
    for package, row in table.items():
        allowed = row["Allowed range"].strip("`")
        assert pins.get(package.lower()) == {allowed}, (package, allowed, pins.get(package))


def _ends() -> dict[str, dict[str, str]]:
    tree = ast.parse((ROOT / "noxfile.py").read_text(encoding="utf-8"))
    ends: dict[str, dict[str, str]] = next(
        ast.literal_eval(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "ENDS" for t in node.targets)
    )
    return ends


def test_the_framework_ends_are_the_nox_sessions() -> None:
    ends = _ends()
    table = _table()
    for package in ends["oldest"]:
        assert table[package]["Tested oldest"] == ends["oldest"][package]
        assert table[package]["Tested newest"] == ends["newest"][package]


def _installed(package: str) -> str:
    if package == "Python":
        return "{}.{}".format(*sys.version_info[:2])
    return metadata.version(package)


def test_a_tested_oldest_is_a_version_a_session_installs() -> None:
    # "Tested oldest" names a version only when a run installs it: a nox `compat` end, the one
    # version an exact pin allows, or the installed version when it is the range's lower bound.
    # Any other lower bound is declared but untested, and the table says "not tested".
    oldest = _ends()["oldest"]
    for package, row in _table().items():
        tested, allowed = row["Tested oldest"], row["Allowed range"].strip("`")
        if tested == "not tested":
            continue
        lower = re.search(r"(?:>=|==)\s*([0-9][^,]*)", allowed)
        assert lower is not None, (package, allowed)
        installs = {oldest.get(package)}
        if allowed.startswith("=="):
            installs.add(lower.group(1))
        if _minor(_installed(package)) == _minor(lower.group(1)):
            installs.add(_installed(package))
        assert tested in installs, f"{package}: {tested} is tested by no session (not tested?)"


#: Ranges that end before the next minor release: the suite runs on the table's newest minor.
PINNED_BY_MINOR = ("agent-framework-core", "agent-framework-foundry-hosting", "mcp")


def _minor(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:2])


def test_the_newest_tested_is_what_the_suite_runs_on() -> None:
    # `make test` runs on the newest end of each range. Where a range is open (a later release
    # may be installed tomorrow), the table must at least not claim a version newer than the
    # one installed.
    for package, row in _table().items():
        if package == "Python":
            continue
        installed, newest = metadata.version(package), row["Tested newest"]
        if package in PINNED_BY_MINOR:
            assert installed == newest or _minor(installed) == _minor(newest), (package, installed)
        else:
            assert _minor(installed) >= _minor(newest), (package, installed, newest)
