"""The benchmark's report shows every step ``python -m bench`` runs (its figures, or why there
are none), and ``check_complete`` fails a run where one is missing."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"


@pytest.fixture
def report(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(ROOT))
    import bench._report as report

    return report


def _bare() -> dict[str, Any]:
    return {
        "mode": "quick",
        "started": "2026-01-01T00:00:00+00:00",
        "duration_s": 1.0,
        "machine": {
            "cpu_model": "cpu",
            "cores": 2,
            "memory_bytes": 0,
            "os": "os",
            "python": "3",
            "packages": {},
        },
        "sizes": {"latencies": [0.02]},
        "by_latency": {"20ms": {}},
        "errors": [],
    }


def test_a_run_missing_steps_is_incomplete_and_says_which(report: ModuleType) -> None:
    r = _bare()
    r["toolbox"] = {"error": "RuntimeError: the toolbox stand-in did not start"}
    r["targets"] = report.evaluate_targets(r)
    problems = report.check_complete(r)
    for step in ("replicas", "throttle", "lifetime", "sweep", "memory_chain"):
        assert f"{step}: not run" in problems
    assert "20ms cold_start: not run" in problems
    assert "toolbox: no figures" in problems
    md = report.markdown(r)
    for title in (
        "### Cold start",
        "### Foundry toolbox",
        "### Replicas sharing one Redis",
        "### Throttling and stalled requests",
        "### Over several token lifetimes",
        "### Token POSTs by users and by concurrency",
        "### Steps",
    ):
        assert title in md
    assert "Failed: RuntimeError: the toolbox stand-in did not start" in md
    for step in report.STEPS:  # every step is listed, run or not
        assert f"| {step} |" in md


def test_every_step_of_a_full_run_shows_its_figures(report: ModuleType) -> None:
    """The committed full run, with the steps recorded in their own files merged in."""
    r = json.loads((RESULTS / "latest.json").read_text())
    cold = json.loads((RESULTS / "cold.json").read_text())
    throttle = json.loads((RESULTS / "throttle.json").read_text())
    for label, sc in r["by_latency"].items():
        if label in cold["by_latency"]:
            sc["cold_start"] = cold["by_latency"][label]
    r["throttle"] = throttle
    r["toolbox"] = json.loads((RESULTS / "toolbox.json").read_text())
    r["lifetime"] = json.loads((RESULTS / "lifetime.json").read_text())
    r.setdefault("memory_chain", json.loads((RESULTS / "memory_chain.json").read_text())["results"])
    r["replicas"] = {
        "replicas": 4,
        "users": 6,
        "calls_per_user": 4,
        "rounds": 2,
        "round_trips": {
            "expected_with_l2": 6,
            "shared": {"median": 6, "iqr": 0},
            "local": {"median": 24, "iqr": 0},
        },
        "cold_burst": {
            "calls": 64,
            "shared": {"median": 1, "iqr": 0},
            "local": {"median": 4, "iqr": 0},
        },
        "l2_hit_us": {"median": 300.0, "iqr": 10.0},
        "l1_hit_us": {"median": 30.0, "iqr": 1.0},
        "l2_over_l1_ratio": 10.0,
        "redis_commands_per_l1_hit": 0,
        "memory_per_entry": {
            "memory_usage_bytes": {"median": 2000, "iqr": 0},
            "sealed_value_bytes": {"median": 1800, "iqr": 0},
            "over_sealed_value_bytes_max": 200,
            "bound_bytes": 512,
        },
    }
    r["steps"] = [
        {"step": name, "latency": None, "ok": True, "seconds": 1.0} for name in report.STEPS
    ]
    r["targets"] = report.evaluate_targets(copy.deepcopy(r))
    names = {t["name"] for t in r["targets"]}
    assert any(n.startswith("POSTs during a 30 s Retry-After") for n in names)
    assert any(n.startswith("replicas: POSTs with the shared cache") for n in names)
    assert any(n.startswith("toolbox: runs answered as another user") for n in names)
    assert any(n.startswith("cold start wall") for n in names)
    commands = [t for t in r["targets"] if t["name"] == "replicas: Redis commands per L1 hit"]
    assert commands[0]["measured"] == 0  # a zero is a figure, not a missing one
    assert commands[0]["pass"]
    problems = report.check_complete(r)
    assert not [p for p in problems if "not run" in p or "no figures" in p], problems
    md = report.markdown(r)
    assert "Figures incomplete" not in md
    assert "Not run." not in md
    assert "No figures." not in md
    assert "| throttle (429) |" in md  # the throttle table
    assert "| entra-passthrough (64 workers) | 8 |" in md  # the stall table
    assert "Toolbox comparison" in md
    assert "(idle loop floor)" in md  # the cold-start table
    assert "| token POSTs (U = 6) |" in md
    assert "POSTs = 1.00 per user per lifetime" in md
    assert "not run" not in md


def test_an_exact_count_is_met_only_when_every_round_met_it(report: ModuleType) -> None:
    """POST counts are exact targets: a round that missed fails it even when the median of
    three rounds does not show it (rounds of 50, 51, 50 POSTs for 50 users)."""

    def counts(*rounds: int) -> dict[str, float]:
        ordered = sorted(rounds)
        return {"median": ordered[len(ordered) // 2], "min": ordered[0], "max": ordered[-1]}

    for rounds, met in (((50, 50, 50), True), ((50, 51, 50), False)):
        r = _bare()
        r["by_latency"]["20ms"] = {
            "round_trips": {"users": 50, "patterns": {report.OURS: {"posts": counts(*rounds)}}},
            "cold_burst": {"patterns": {report.OURS: {"posts": counts(*(x - 49 for x in rounds))}}},
        }
        targets = {t["name"]: t for t in report.evaluate_targets(r)}
        assert targets["round trips = U (20ms)"]["pass"] is met
        assert targets["cold burst = 1 POST (20ms)"]["pass"] is met


def test_the_toolbox_and_replica_counts_hold_in_every_round(report: ModuleType) -> None:
    """The same for the toolbox's "answered as another user" (0 in every round) and the
    replicas' POSTs and cold burst."""
    from bench._toolbox import OURS as TOOLBOX_OURS

    def counts(*rounds: int) -> dict[str, float]:
        ordered = sorted(rounds)
        return {"median": ordered[len(ordered) // 2], "min": ordered[0], "max": ordered[-1]}

    for bad, met in ((0, True), (1, False)):
        toolbox = {"by_users": {"6": {TOOLBOX_OURS: {"wrong_user": counts(0, bad, 0)}}}}
        replicas = {
            "round_trips": {"shared": counts(20, 20 + bad, 20), "expected_with_l2": 20},
            "cold_burst": {"shared": counts(1, 1 + bad, 1)},
        }
        targets = {
            t["name"]: t
            for t in report._toolbox_targets(toolbox) + report._replica_targets(replicas)
        }
        assert targets["toolbox: runs answered as another user (ours)"]["pass"] is met
        found = [t for name, t in targets.items() if name.startswith("replicas: POSTs")]
        assert found[0]["pass"] is met
        found = [t for name, t in targets.items() if name.startswith("replicas: cold burst")]
        assert found[0]["pass"] is met
