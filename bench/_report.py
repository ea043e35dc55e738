"""Targets, completeness check, and the outputs: latest.json, latest.md, PNG charts."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ._patterns import BASELINES, Ours
from ._roundtrip import OURS_IN_BURST

OURS = Ours.name
#: Every step ``python -m bench`` runs (bench/__main__.py): each appears in latest.md (its
#: figures, or why there are none) and ``check_complete`` fails the run if one did not run.
PER_LATENCY_STEPS = ("round_trips", "cold_burst", "loop_lag", "cold_start")
FIRST_LATENCY_STEPS = ("sweep", "overhead", "memory_real_path", "end_to_end")
RUN_STEPS = (
    "middleware",
    "memory_synthetic",
    "memory_chain",
    "toolbox",
    "lifetime",
    "replicas",
    "throttle",
)
STEPS = (*PER_LATENCY_STEPS, *FIRST_LATENCY_STEPS, *RUN_STEPS)
BASELINE_NAMES = [b.name for b in BASELINES]  # type: ignore[attr-defined]
ALL_NAMES = [OURS, *BASELINE_NAMES]


def _med(d: Any, *path: str) -> float:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return math.nan
        d = d[p]
    if isinstance(d, dict):
        return float(d.get("median", math.nan))
    return float(d) if isinstance(d, (int, float)) else math.nan


def _every_round(d: Any, *path: str) -> float:
    """The value of a count that every round gave (min == max), else NaN: an exact count
    target is met only when no round missed it (the median hid one bad round in three)."""
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return math.nan
        d = d[p]
    if isinstance(d, dict):
        low, high = d.get("min", d.get("median")), d.get("max", d.get("median"))
        if isinstance(low, (int, float)) and low == high:
            return float(low)
        return math.nan
    return float(d) if isinstance(d, (int, float)) else math.nan


def _most(d: Any, *path: str) -> float:
    """The largest value any round gave (``max``; a result with a median only: the median):
    a count that must be 0 in every round."""
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return math.nan
        d = d[p]
    if isinstance(d, dict):
        value = d.get("max", d.get("median", math.nan))
        return float(value) if isinstance(value, (int, float)) else math.nan
    return float(d) if isinstance(d, (int, float)) else math.nan


def _target(
    name: str,
    target: str,
    measured: float,
    ok: bool,
    margin: str,
    where: str,
    *,
    invariant: bool = False,
) -> dict[str, Any]:
    """``invariant``: a count or a bound, not a time; the run fails when it is missed (the
    quick run in CI checks these and never a time)."""
    return {
        "name": name,
        "target": target,
        "measured": None if math.isnan(measured) else measured,
        "pass": bool(ok) and not math.isnan(measured),
        "margin": margin,
        "where": where,
        "invariant": invariant,
    }


def evaluate_targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for label, sc in r.get("by_latency", {}).items():
        rt = sc.get("round_trips", {})
        posts = _med(rt, "patterns", OURS, "posts")
        exact = _every_round(rt, "patterns", OURS, "posts")
        u = rt.get("users", math.nan)
        out.append(
            _target(
                f"round trips = U ({label})",
                f"token POSTs == U = {u} (every round)",
                posts,
                exact == u,
                f"{posts - u:+.0f} POSTs" if not math.isnan(exact) else "rounds differ",
                f"by_latency.{label}.round_trips",
                invariant=True,
            )
        )
        cb = sc.get("cold_burst", {})
        posts = _med(cb, "patterns", OURS, "posts")
        exact = _every_round(cb, "patterns", OURS, "posts")
        out.append(
            _target(
                f"cold burst = 1 POST ({label})",
                "token POSTs == 1 (every round)",
                posts,
                exact == 1,
                f"{posts - 1:+.0f} POSTs" if not math.isnan(exact) else "rounds differ",
                f"by_latency.{label}.cold_burst",
                invariant=True,
            )
        )
        ll = sc.get("loop_lag", {})
        over = _med(ll, "patterns", OURS, "max_over_floor_ms")
        out.append(
            _target(
                f"max loop lag, {ll.get('users', '?')} cold users ({label})",
                "max lag <= floor's + 5 ms",
                over,
                over <= 5.0,
                f"{over - 5.0:+.2f} ms vs the allowance" if not math.isnan(over) else "n/a",
                f"by_latency.{label}.loop_lag",
            )
        )
    sw = r.get("sweep", {})
    for axis in ("by_users", "by_concurrency"):
        pts = sw.get(axis, {}).get(OURS, [])
        if not pts:
            out.append(
                _target(
                    f"sweep {axis} = U",
                    "POSTs == U at every point",
                    math.nan,
                    False,
                    "n/a",
                    "sweep",
                )
            )
            continue
        want = [x if axis == "by_users" else sw.get("fixed_users") for x, _ in pts]
        worst = max(p - w for (_, p), w in zip(pts, want, strict=True))
        out.append(
            _target(
                f"sweep {axis.replace('_', ' ')}: POSTs = U",
                "POSTs == U at every point",
                float(worst),
                worst == 0,
                f"worst point {worst:+d} POSTs",
                f"sweep.{axis}",
                invariant=True,
            )
        )
    oh = r.get("overhead", {})
    for kind in ("httpx2", "httpx"):
        ratio = _med(oh, "loopback", f"ratio_{kind}")
        out.append(
            _target(
                f"warm per-call latency, {kind} (loopback)",
                "<= 1.03x static header",
                ratio,
                ratio <= 1.03,
                f"{(ratio - 1.03) * 100:+.1f} points vs 1.03" if not math.isnan(ratio) else "n/a",
                f"overhead.loopback.ratio_{kind}",
            )
        )
        us = _med(oh, "in_process", f"auth_flow_us_{kind}")
        out.append(
            _target(
                f"auth flow alone, {kind} (in-process)",
                "<= 5 us over a no-op Auth",
                us,
                us <= 5.0,
                f"{us - 5.0:+.1f} us vs 5 us" if not math.isnan(us) else "n/a",
                f"overhead.in_process.auth_flow_us_{kind}",
            )
        )
        us = _med(oh, "in_process", f"new_caller_us_{kind}")
        out.append(
            _target(
                f"new caller per request, {kind} (in-process)",
                "<= 10 us over a no-op Auth (capture + bind + header read + hash + auth flow)",
                us,
                us <= 10.0,
                f"{us - 10.0:+.1f} us vs 10 us" if not math.isnan(us) else "n/a",
                f"overhead.in_process.new_caller_us_{kind}",
            )
        )
    cpu = oh.get("flow_cpu", {})
    main = cpu.get("as_installed") or cpu.get("without_otel") or {}
    bare = cpu.get("without_otel", {}) if "as_installed" in cpu else {}
    for field, goal, label in (
        ("auth_flow_us", 5.0, "auth flow alone at a hit"),
        ("new_caller_us", 10.0, "new caller per request"),
    ):
        us = float(main.get(field, math.nan))
        other = bare.get(field)
        out.append(
            _target(
                f"{label}, CPU time, isolated (httpx2 flow)",
                f"<= {goal:.0f} us over a no-op Auth",
                us,
                us <= goal,
                (f"{us - goal:+.1f} us vs {goal:.0f} us" if not math.isnan(us) else "n/a")
                + (f"; {other:.1f} us without opentelemetry-api" if other else ""),
                "overhead.flow_cpu",
            )
        )
    ratio = _med(r.get("end_to_end", {}), "ratio")
    out.append(
        _target(
            "end to end, tool call via ResponsesHostServer + MCP",
            "reported (no target in the issue); ours / static token",
            ratio,
            not math.isnan(ratio),
            f"{(ratio - 1) * 100:+.1f}% vs static token" if not math.isnan(ratio) else "n/a",
            "end_to_end.ratio",
        )
    )
    ratio = _med(r.get("middleware", {}), "ratio")
    out.append(
        _target(
            "capture middleware throughput",
            ">= 0.97x without it",
            ratio,
            ratio >= 0.97,
            f"{(ratio - 0.97) * 100:+.1f} points vs 0.97" if not math.isnan(ratio) else "n/a",
            "middleware.ratio",
        )
    )
    cpu_ratio = _med(r.get("middleware", {}), "cpu_ratio")
    out.append(
        _target(
            "capture middleware, server CPU per request",
            ">= 0.97x (CPU per request without / with: less moved by machine load than req/s)",
            cpu_ratio,
            cpu_ratio >= 0.97,
            f"{(cpu_ratio - 0.97) * 100:+.1f} points vs 0.97"
            if not math.isnan(cpu_ratio)
            else "n/a",
            "middleware.cpu_ratio",
        )
    )
    for m in r.get("memory_synthetic", []) if isinstance(r.get("memory_synthetic"), list) else []:
        over = float(m.get("overhead_per_entry_bytes", math.nan))
        out.append(
            _target(
                f"memory per entry at {m.get('entries')} entries",
                "<= token size + 1 KiB",
                over,
                over <= 1024 and bool(m.get("within_bound")),
                f"{over - 1024:+.0f} B vs 1 KiB overhead; bound kept: {m.get('within_bound')}",
                "memory_synthetic",
            )
        )
    real = r.get("memory_real_path", {})
    ours_rss = _med(real, OURS, "rss_per_user_bytes")
    msal_rss = _med(real, "shared MSAL app", "rss_per_user_bytes")
    out.append(
        _target(
            "RSS per user on the real OBO path (vs shared MSAL app)",
            "reported: includes the request path's allocator growth, not only the entry",
            ours_rss,
            ours_rss <= msal_rss,
            f"{ours_rss / 1024:.1f} KiB vs {msal_rss / 1024:.1f} KiB per user"
            if not math.isnan(ours_rss + msal_rss)
            else "n/a",
            "memory_real_path",
        )
    )
    per_user = _med(real, OURS, "msal_entries_per_user")
    out.append(
        _target(
            "MSAL caches on our path",
            "0 MSAL cache entries per user (our bounded cache only)",
            per_user,
            per_user == 0,
            f"{per_user:+.2f} MSAL entries/user" if not math.isnan(per_user) else "n/a",
            "memory_real_path",
            invariant=True,
        )
    )
    for m in r.get("memory_synthetic", []) if isinstance(r.get("memory_synthetic"), list) else []:
        kept = m.get("within_bound")
        out.append(
            _target(
                f"cache bound kept at {m.get('entries')} entries",
                "size <= max_entries after 2x more stores",
                float(m.get("size_after_2x_more", math.nan)),
                bool(kept),
                f"size {m.get('size_after_2x_more')} for max_entries {m.get('entries')}",
                "memory_synthetic",
                invariant=True,
            )
        )
    chain = r.get("memory_chain")
    for m in chain if isinstance(chain, list) else []:
        over = float(m.get("overhead_per_entry_bytes", math.nan))
        out.append(
            _target(
                f"memory per entry through the real chain at {m.get('entries')} entries",
                "<= token + 512 B (RSS)",
                over,
                over <= 512,
                f"{over - 512:+.0f} B vs 512 B" if not math.isnan(over) else "n/a",
                "memory_chain",
            )
        )
    out += lifetime_targets(r.get("lifetime", {}))
    out += _cold_targets(r)
    out += _toolbox_targets(_figures(r.get("toolbox")))
    out += _replica_targets(_figures(r.get("replicas")))
    out += _throttle_targets(_figures(r.get("throttle")))
    return out


def _num(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) else math.nan  # 0 is a figure, None is not


def _figures(x: Any) -> dict[str, Any]:
    """A step's result as a dict ({} when it failed or did not run)."""
    return x if isinstance(x, dict) and "error" not in x else {}


def _cold_targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for label, sc in r.get("by_latency", {}).items():
        t = _figures(sc.get("cold_start")).get("targets") or {}
        users = _figures(sc.get("cold_start")).get("users", "?")
        wall = float(t.get("wall_ratio_vs_best", math.nan))
        out.append(
            _target(
                f"cold start wall, {users} cold users ({label})",
                "<= 1.2x the best baseline",
                wall,
                wall <= 1.2,
                f"{wall - 1.2:+.2f} vs 1.2x ({t.get('best_baseline')})"
                if not math.isnan(wall)
                else "n/a",
                f"by_latency.{label}.cold_start.targets",
            )
        )
    return out


def _toolbox_targets(tb: dict[str, Any]) -> list[dict[str, Any]]:
    from ._toolbox import OURS as TOOLBOX_OURS

    levels = tb.get("by_users", {})
    wrong = [_most(level, TOOLBOX_OURS, "wrong_user") for level in levels.values()]
    errors = [_most(level, TOOLBOX_OURS, "errors") for level in levels.values()]
    worst_wrong = max(wrong) if wrong else math.nan
    worst_errors = max(errors) if errors else math.nan
    return [
        _target(
            "toolbox: runs answered as another user (ours)",
            "0 at every U",
            worst_wrong,
            worst_wrong == 0,
            f"{worst_wrong:+.0f}" if not math.isnan(worst_wrong) else "n/a",
            "toolbox.by_users",
            invariant=True,
        ),
        _target(
            "toolbox: errors (ours)",
            "0 at every U",
            worst_errors,
            worst_errors == 0,
            f"{worst_errors:+.0f}" if not math.isnan(worst_errors) else "n/a",
            "toolbox.by_users",
        ),
    ]


def _replica_targets(rep: dict[str, Any]) -> list[dict[str, Any]]:
    rt = rep.get("round_trips", {})
    posts = _every_round(rt, "shared")  # exact counts: every round (NaN when rounds differ)
    users = float(rt.get("expected_with_l2", math.nan))
    burst = _every_round(rep.get("cold_burst", {}), "shared")
    commands = _num(rep.get("redis_commands_per_l1_hit"))
    mem = rep.get("memory_per_entry", {})
    over = _num(mem.get("over_sealed_value_bytes_max"))
    n = rep.get("replicas", "?")
    return [
        _target(
            f"replicas: POSTs with the shared cache ({n} replicas)",
            f"== U = {rt.get('expected_with_l2', '?')}",
            posts,
            posts == users,
            f"{posts - users:+.0f} POSTs" if not math.isnan(posts + users) else "rounds differ",
            "replicas.round_trips",
        ),
        _target(
            f"replicas: cold burst over {n} replicas",
            "1 POST",
            burst,
            burst == 1,
            f"{burst - 1:+.0f} POSTs" if not math.isnan(burst) else "rounds differ",
            "replicas.cold_burst",
        ),
        _target(
            "replicas: Redis commands per L1 hit",
            "0",
            commands,
            commands == 0,
            f"{commands:+.2f}" if not math.isnan(commands) else "n/a",
            "replicas.redis_commands_per_l1_hit",
        ),
        _target(
            "replicas: L2 entry over the sealed value",
            "<= 512 B",
            over,
            over <= 512,
            f"{over - 512:+.0f} B vs 512 B" if not math.isnan(over) else "n/a",
            "replicas.memory_per_entry",
            invariant=True,
        ),
    ]


def _throttle_targets(th: dict[str, Any]) -> list[dict[str, Any]]:
    t = th.get("throttle", {})
    st = th.get("stall", {})
    posts = float(t.get("posts_during_wait", math.nan))
    ratio = float(st.get("ratio", math.nan))
    return [
        _target(
            f"POSTs during a {t.get('retry_after_s', '?')} s Retry-After, "
            f"{t.get('users', '?')} users",
            "<= 1 per authority",
            posts,
            posts <= 1,
            f"{posts - 1:+.0f} POSTs, {t.get('calls_during_wait')} calls"
            if not math.isnan(posts)
            else "n/a",
            "throttle.throttle",
            invariant=True,
        ),
        _target(
            f"healthy user with {st.get('stalled', '?')} stalled",
            "<= 1.1x no stall",
            ratio,
            ratio <= 1.1,
            f"{ratio - 1.1:+.2f} vs 1.1x" if not math.isnan(ratio) else "n/a",
            "throttle.stall",
        ),
    ]


def lifetime_targets(lt: dict[str, Any]) -> list[dict[str, Any]]:
    """The long run's targets (every one an invariant), for the report and for
    ``python -m bench._lifetime`` alone, which fails when one is missed."""
    where = "lifetime"
    size = (
        f"{lt.get('users')} users, {lt.get('lifetime_s')} s tokens x {lt.get('lifetimes')}"
        if "users" in lt
        else "not run"
    )
    per = float(lt.get("posts_per_user_per_lifetime", math.nan))
    refreshes = float(lt.get("cache_refreshes", math.nan))
    slow = float(lt.get("waited_with_valid_token_cached", math.nan))
    waited = float(lt.get("acquired_with_valid_token_cached", math.nan))
    failures = lt.get("failures", 1)
    return [
        _target(
            f"OBO POSTs per user per token lifetime ({size})",
            "exactly 1",
            per,
            per == 1 and failures == 0,
            f"{lt.get('obo_posts')} POSTs for {lt.get('user_tokens')} user tokens, "
            f"{failures} failed calls",
            where,
            invariant=True,
        ),
        _target(
            "refreshes ahead of a capped token (long run)",
            "0 (nothing fresher than the assertion's expiry can be had)",
            refreshes,
            refreshes == 0,
            f"{refreshes:+.0f} refreshes" if not math.isnan(refreshes) else "n/a",
            where,
            invariant=True,
        ),
        _target(
            "requests that waited on Entra with a valid token cached (long run)",
            "0",
            waited,
            waited == 0,
            f"{waited:+.0f} of {lt.get('calls')} calls acquired (the cache's misses beyond "
            f"each user token's first call); {slow:.0f} took >= "
            f"{_fmt(lt.get('waited_threshold_s', math.nan) * 1e3, 0)} ms (half an Entra round "
            "trip)"
            if not math.isnan(waited)
            else "n/a",
            where,
            invariant=True,
        ),
    ]


def check_complete(r: dict[str, Any]) -> list[str]:
    """Every scenario ran and every alternative produced a figure (no timing checks)."""
    problems = [f"{e['scenario']}: {e['error'].strip().splitlines()[-1]}" for e in r["errors"]]
    for label in [f"{round(x * 1000)}ms" for x in r["sizes"]["latencies"]]:
        sc = r["by_latency"].get(label, {})
        for name in ("round_trips", "cold_burst", "loop_lag"):
            pats = sc.get(name, {}).get("patterns", {})
            for p in ALL_NAMES:
                if p not in pats:
                    problems.append(f"{label} {name}: no figure for {p!r}")
    for axis in ("by_users", "by_concurrency"):
        for p in ALL_NAMES:
            if p not in r.get("sweep", {}).get(axis, {}):
                problems.append(f"sweep {axis}: no figure for {p!r}")
    for key, fields in (
        ("overhead", ("loopback", "in_process")),
        ("middleware", ("ratio",)),
        ("memory_real_path", (OURS, "shared MSAL app")),
        ("end_to_end", ("ratio",)),
    ):
        for f in fields:
            if f not in r.get(key, {}):
                problems.append(f"{key}: missing {f}")
    if not isinstance(r.get("memory_synthetic"), list) or not r["memory_synthetic"]:
        problems.append("memory_synthetic: missing")
    if not isinstance(r.get("memory_chain"), list) or not r["memory_chain"]:
        problems.append("memory_chain: missing")
    if "posts_per_user_per_lifetime" not in r.get("lifetime", {}):
        problems.append("lifetime: missing")
    problems += _missing_steps(r)
    # the invariants (counts and bounds, never a time): a miss fails the run, quick or full
    for t in r.get("targets", []):
        if t.get("invariant") and not t["pass"] and t["measured"] is not None:
            problems.append(f"invariant missed: {t['name']}: {t['target']} ({t['margin']})")
    return sorted(set(problems))


def _missing_steps(r: dict[str, Any]) -> list[str]:
    """Every step of STEPS ran and left its figures (per latency where it runs per latency)."""
    problems = []
    labels = [f"{round(x * 1000)}ms" for x in r["sizes"]["latencies"]]
    for label in labels:
        sc = r["by_latency"].get(label, {})
        for name in PER_LATENCY_STEPS:
            if name not in sc:
                problems.append(f"{label} {name}: not run")
        cold = _figures(sc.get("cold_start"))
        for p in ALL_NAMES:
            if cold and p not in cold.get("patterns", {}):
                problems.append(f"{label} cold_start: no figure for {p!r}")
    for name in (*FIRST_LATENCY_STEPS, *RUN_STEPS):
        if name not in r:
            problems.append(f"{name}: not run")
    if "toolbox" in r:
        tb = _figures(r["toolbox"])
        try:
            from ._toolbox import check_complete as toolbox_complete

            problems += toolbox_complete(tb) if tb else ["toolbox: no figures"]
        except (KeyError, TypeError) as exc:
            problems.append(f"toolbox: figures incomplete ({exc!r})")
    if "replicas" in r and "round_trips" not in _figures(r["replicas"]):
        problems.append("replicas: no figures")
    if "throttle" in r:
        th = _figures(r["throttle"])
        if "posts_during_wait" not in th.get("throttle", {}):
            problems.append("throttle: no throttle figures")
        if "ratio" not in th.get("stall", {}):
            problems.append("throttle: no stall figures")
    return problems


# --- markdown ----------------------------------------------------------------------------------


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _miqr(s: Any, scale: float = 1.0, digits: int = 2) -> str:
    if not isinstance(s, dict) or "median" not in s:
        return "—"
    return f"{s['median'] * scale:.{digits}f} (IQR {s['iqr'] * scale:.{digits}f})"


HEADLINE = "shared-cache credential"
# Serialising every call (sync-in-async) makes each call wait about one round trip while the
# whole run takes U*C round trips: its per-call wait is not a latency anyone gets. The best
# baseline for per-call wait is therefore picked among the patterns that keep calls concurrent.
_CONCURRENT = [n for n in BASELINE_NAMES if n != "sync-in-async"]


def _versus(pats: dict[str, Any]) -> str:
    """Our ratios to the headline baseline and to the best baseline for each figure."""
    parts = []
    for label, field, names in (
        ("token POSTs", "posts", BASELINE_NAMES),
        ("mean token wait per call", "mean_latency_ratio_to_round_trip", _CONCURRENT),
        ("wall time", "wall_s", BASELINE_NAMES),
    ):
        ours = _med(pats, OURS, field)
        head = _med(pats, HEADLINE, field)
        best, value = "", math.inf
        for name in names:
            v = _med(pats, name, field)
            if not math.isnan(v) and v < value:
                best, value = name, v
        if math.isnan(ours) or not best:
            continue
        parts.append(
            f"{label}: {ours / head:.2f}x the {HEADLINE} (headline), "
            f"{ours / value:.2f}x the best baseline ({best})"
        )
    return "Ours relative to the baselines (lower is better): " + "; ".join(parts) + "."


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [
        f"## Results ({r['mode']} run, {r['started']}, {r.get('duration_s', '?')} s)",
        "",
        f"Machine: {m['cpu_model']}, {m['cores']} cores, "
        f"{(m.get('memory_bytes') or 0) / 2**30:.1f} GiB, {m['os']}, Python {m['python']}; "
        f"load average at start {m.get('load_average_at_start')}.  ",
        "Packages: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v) + ".  ",
        "Medians over interleaved rounds, IQR in brackets; every ratio is to a floor measured "
        "in the same round.",
        "",
        "### Targets",
        "",
        "| target | goal | measured | result | margin |",
        "|---|---|---|---|---|",
    ]
    for t in r.get("targets", []):
        lines.append(
            f"| {t['name']} | {t['target']} | {_fmt(t['measured'])} | "
            f"{'PASS' if t['pass'] else 'MISS'} | {t['margin']} |"
        )
    for label, sc in r.get("by_latency", {}).items():
        rt = sc.get("round_trips", {})
        cb = sc.get("cold_burst", {})
        ll = sc.get("loop_lag", {})
        if "patterns" not in rt:
            continue
        lines += [
            "",
            f"### Token round trips, emulator latency {label}",
            "",
            f"{rt['users']} users x {rt['calls_per_user']} calls at concurrency "
            f"{rt['concurrency']} ({rt['calls_per_user'] * rt['users']} calls; minimum "
            f"{rt['minimum']} POSTs), and a cold burst of {cb.get('calls_per_user', '?')} "
            f"concurrent calls for one user (minimum 1). {rt['rounds']} rounds. Latency ratio = "
            "median per-call latency / one raw OBO round trip "
            f"({_miqr(rt.get('floor_round_trip_s'), 1e3)} ms) in the same round.",
            "",
            "| pattern | POSTs | mean token wait per call / round trip | median / round trip "
            "| wall / round trip | burst POSTs | burst wait / round trip "
            f"| loop lag max ms ({ll.get('users', '?')} cold users) | p99 ms |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name in ALL_NAMES:
            p = rt["patterns"].get(name, {})
            b = cb.get("patterns", {}).get(name, {})
            lg = ll.get("patterns", {}).get(name, {})
            lines.append(
                f"| {name} | {_miqr(p.get('posts'), digits=0)} | "
                f"{_miqr(p.get('mean_latency_ratio_to_round_trip'), digits=3)} | "
                f"{_miqr(p.get('latency_ratio_to_round_trip'), digits=3)} | "
                f"{_miqr(p.get('wall_ratio_to_round_trip'), digits=1)} | "
                f"{_miqr(b.get('posts'), digits=0)} | "
                f"{_miqr(b.get('mean_latency_ratio_to_round_trip'), digits=2)} | "
                f"{_miqr(lg.get('max_ms'), digits=1)} | {_miqr(lg.get('p99_ms'), digits=1)} |"
            )
        extra = ll.get("patterns", {}).get(OURS_IN_BURST)
        if extra:
            lines.append(
                f"| *{OURS_IN_BURST}* | | | | | | | {_miqr(extra.get('max_ms'), digits=1)} | "
                f"{_miqr(extra.get('p99_ms'), digits=1)} |"
            )
        if "floor" in ll:
            lines.append(
                "| *floor (idle loop)* | | | | | | | "
                f"{_miqr(ll['floor'].get('max_ms'), digits=1)} | "
                f"{_miqr(ll['floor'].get('p99_ms'), digits=1)} |"
            )
        lines += ["", _versus(rt["patterns"])]
    oh = r.get("overhead", {})
    if "loopback" in oh:
        lp, ip = oh["loopback"], oh["in_process"]
        lines += [
            "",
            "### Overhead at cache hit",
            "",
            f"Loopback: {lp['requests_per_batch']} sequential GETs per batch to uvicorn in another "
            f"process, {oh['rounds']} interleaved rounds. In-process: MockTransport, "
            f"{ip['requests_per_batch']} requests per batch.",
            "",
            "| client | loopback µs/request | in-process µs/request |",
            "|---|---|---|",
        ]
        for k in (
            "httpx2 static header",
            "httpx2 EntraAuth",
            "httpx static header",
            "httpx EntraAuth",
        ):
            lines.append(
                f"| {k} | {_miqr(lp['per_request_s'].get(k), 1e6, 0)} | "
                f"{_miqr(ip['per_request_us'].get(k), digits=1)} |"
            )
        for k in (
            "httpx2 EntraAuth, new caller",
            "httpx2 no-op Auth",
            "httpx2 static Auth",
            "httpx EntraAuth, new caller",
            "httpx no-op Auth",
            "httpx static Auth",
            "httpx no-op Auth, stock cookies",
        ):
            if k in ip["per_request_us"]:
                lines.append(f"| {k} | | {_miqr(ip['per_request_us'][k], digits=1)} |")
        lines += [
            "",
            "Ratio EntraAuth / static header (loopback): "
            f"httpx2 {_miqr(lp['ratio_httpx2'], digits=3)}, "
            f"httpx {_miqr(lp['ratio_httpx'], digits=3)}. Auth flow alone (EntraAuth − no-op Auth, "
            f"in-process): httpx2 {_miqr(ip['auth_flow_us_httpx2'], digits=1)} µs, httpx "
            f"{_miqr(ip['auth_flow_us_httpx'], digits=1)} µs; over a hand-written bearer `Auth` "
            "that only sets the header: httpx2 "
            f"{_miqr(ip.get('auth_flow_over_static_auth_us_httpx2'), digits=1)} µs, httpx "
            f"{_miqr(ip.get('auth_flow_over_static_auth_us_httpx'), digits=1)} µs "
            f"({ip.get('batches', '?')} batches of {ip['requests_per_batch']} requests). "
            "Fastest batch of each, differenced (the least-disturbed estimate on a shared "
            f"machine): httpx2 {_fmt(ip['auth_flow_us_httpx2'].get('min_batches'), 1)} µs, "
            f"httpx {_fmt(ip['auth_flow_us_httpx'].get('min_batches'), 1)} µs over a no-op Auth.",
            "",
            "A new caller per request (what `CallerMiddleware` does when a request arrives: a "
            "`Caller` from the raw headers, bound, ended after; then its headers read and the "
            "token hashed on the chain's first look, and the auth flow at a cache hit) over a "
            f"no-op Auth: httpx2 {_miqr(ip.get('new_caller_us_httpx2'), digits=1)} µs, httpx "
            f"{_miqr(ip.get('new_caller_us_httpx'), digits=1)} µs (fastest batches differenced: "
            f"httpx2 {_fmt(ip.get('new_caller_us_httpx2', {}).get('min_batches'), 1)} µs, httpx "
            f"{_fmt(ip.get('new_caller_us_httpx', {}).get('min_batches'), 1)} µs); the cached-"
            "caller figures above bind one `Caller` for the whole batch.",
        ]
        stock = ip.get("stock_cookie_layer_us_httpx")
        if stock:
            lines += [
                "",
                "The in-process `httpx` clients all have the cookie layer `EntraAuth.install()` "
                "gives (the jar skipped for a response that sets no cookie, as httpx2 does "
                "itself). httpx's stock layer costs "
                f"{_miqr(stock, digits=1)} µs a request more (a no-op `Auth` on each), which "
                "`install()` saves; a client given `auth=` alone keeps it, and pays ~5 µs more "
                "for the copy of the bearer it makes.",
            ]
        cpu = oh.get("flow_cpu", {})
        main = cpu.get("as_installed") or cpu.get("without_otel")
        if main:
            bare = cpu.get("without_otel", {}) if "as_installed" in cpu else {}
            lines += [
                "",
                "The flow alone in process CPU time (`async_auth_flow` driven directly, min of "
                f"{cpu['batches']} batches of {cpu['requests_per_batch']}; a loaded machine "
                "inflates wall time, not this): over a no-op `Auth`, "
                f"{_fmt(main['auth_flow_us'], 1)} µs at a hit with a cached `Caller`, "
                f"{_fmt(main['new_caller_us'], 1)} µs with a new `Caller` per request (capture "
                f"alone {_fmt(main['capture_only_us'], 1)} µs)"
                + (
                    f"; without opentelemetry-api installed: {_fmt(bare['auth_flow_us'], 1)} "
                    f"and {_fmt(bare['new_caller_us'], 1)} µs."
                    if bare
                    else "."
                ),
            ]
    mw = r.get("middleware", {})
    if "ratio" in mw:
        lines += [
            "",
            "### Capture middleware",
            "",
            f"Starlette under uvicorn, load from a second process ({mw['load_tool']}, "
            f"{mw['connections']} connections, {mw['duration_s']} s per run, "
            f"{mw['rounds']} rounds): "
            f"without {_miqr(mw['rps_without'], digits=0)} req/s, with CallerMiddleware "
            f"{_miqr(mw['rps_with'], digits=0)} req/s; ratio {_miqr(mw['ratio'], digits=3)}.",
        ]
    ms = r.get("memory_synthetic")
    if isinstance(ms, list) and ms:
        lines += [
            "",
            "### Memory",
            "",
            "| entries | token bytes | RSS per entry | overhead per entry "
            "| bound kept (size after 2x more) |",
            "|---|---|---|---|---|",
        ]
        for m in ms:
            lines.append(
                f"| {m['entries']} | {m['token_bytes']} | {m['rss_per_entry_bytes']:.0f} B | "
                f"{m['overhead_per_entry_bytes']:.0f} B | "
                f"{m['within_bound']} ({m['size_after_2x_more']}) |"
            )
    chain = r.get("memory_chain")
    if isinstance(chain, list) and chain:
        lines += [
            "",
            "Through the real chain (`TokenChain` + `OnBehalfOf`: key, partition, cap and result "
            "built by the library's own code, a new `Caller` decoded per user; only the network "
            "exchange replaced): "
            + "; ".join(
                f"{m['entries']} entries: {m['rss_per_entry_bytes']:.0f} B RSS per entry, "
                f"{m['overhead_per_entry_bytes']:.0f} B over the {m['token_bytes']}-byte token"
                for m in chain
                if "entries" in m
            )
            + ".",
        ]
    real = r.get("memory_real_path", {})
    if OURS in real:
        lines += ["", f"Real OBO path, {real['users']} distinct users:", ""]
        for name in (OURS, "shared MSAL app"):
            x = real.get(name, {})
            lines.append(
                f"- {name}: MSAL cache entries {x.get('msal_cache_entries')} "
                f"({_fmt(x.get('msal_entries_per_user'))}/user), "
                f"our cache {x.get('our_cache_entries')}, "
                f"RSS {_fmt(x.get('rss_per_user_bytes', math.nan) / 1024, 1)} KiB/user"
            )
    lines += _lifetime_markdown(r.get("lifetime"))
    e2e = r.get("end_to_end", {})
    lines += ["", "### End to end", ""]
    if "ratio" in e2e:
        lines.append(
            "`POST /responses` to a `ResponsesHostServer` hosted agent (Agent Framework, scripted "
            "chat client) whose tool call goes to an MCP server verifying Entra tokens; "
            f"{e2e['rounds']} interleaved rounds of {e2e['calls_per_round']} turns, warm. "
            f"Static MCP token (stock `MCPStreamableHTTPTool`): "
            f"{_miqr(e2e['latency_static_s'], 1e3, 1)} ms; entra-passthrough (capture, OBO, "
            f"cache, apply): {_miqr(e2e['latency_ours_s'], 1e3, 1)} ms; ratio "
            f"{_miqr(e2e['ratio'], digits=3)}."
        )
    else:
        lines.append(e2e.get("error", e2e.get("skipped", json.dumps(e2e))))
    lines += _cold_markdown(r)
    lines += _sweep_markdown(r.get("sweep"))
    lines += _section("Foundry toolbox", r, "toolbox", _toolbox_markdown)
    lines += _section("Replicas sharing one Redis (L2 cache)", r, "replicas", _replicas_markdown)
    lines += _section("Throttling and stalled requests", r, "throttle", _throttle_markdown)
    lines += _steps_markdown(r)
    if r.get("problems"):
        lines += ["", "### Incomplete", ""] + [f"- {p}" for p in r["problems"]]
    return "\n".join(lines) + "\n"


def _why_not(x: Any) -> str:
    if x is None:
        return "Not run."
    if isinstance(x, dict) and "error" in x:
        return f"Failed: {str(x['error']).splitlines()[0][:300]}"
    return "No figures."


def _section(title: str, r: dict[str, Any], key: str, render: Any) -> list[str]:
    """A step's section: its figures, or why there are none (never left out)."""
    lines = ["", f"### {title}", ""]
    figures = _figures(r.get(key))
    if not figures:
        return [*lines, _why_not(r.get(key))]
    try:
        return [*lines, *render(figures)]
    except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
        return [*lines, f"Figures incomplete ({type(exc).__name__}: {exc}); see latest.json."]


def _cold_markdown(r: dict[str, Any]) -> list[str]:
    from ._cold import _table

    lines = [
        "",
        "### Cold start: burst wall time, p95 and loop lag",
        "",
        "Every pattern: U new users at once (one call each), wall time of the burst, per-call "
        "p50/p95, the event loop's max lag and the idle loop's floor in the same round.",
        "",
    ]
    for label, sc in r.get("by_latency", {}).items():
        cold = _figures(sc.get("cold_start"))
        if not cold:
            lines.append(f"{label}: {_why_not(sc.get('cold_start'))}")
            continue
        try:
            lines += [_table({"by_latency": {label: cold}}), ""]
        except (KeyError, TypeError) as exc:
            lines.append(f"{label}: figures incomplete ({type(exc).__name__}: {exc}).")
    return lines


def _sweep_markdown(sw: Any) -> list[str]:
    lines = ["", "### Token POSTs by users and by concurrency (sweep)", ""]
    figures = _figures(sw)
    if not figures.get("by_users"):
        return [*lines, _why_not(sw)]
    for axis, what in (
        ("by_users", f"users (concurrency {figures.get('fixed_concurrency')})"),
        ("by_concurrency", f"concurrency ({figures.get('fixed_users')} users)"),
    ):
        points = figures.get(axis, {})
        xs = [x for x, _ in next(iter(points.values()), [])]
        lines += [
            f"POSTs for {figures.get('calls_per_user')} calls per user, by {what}:",
            "",
            "| pattern | " + " | ".join(str(x) for x in xs) + " |",
            "|---|" + "---|" * len(xs),
        ]
        for name, pts in points.items():
            lines.append(f"| {name} | " + " | ".join(str(p) for _, p in pts) + " |")
        lines.append("")
    return lines


def _toolbox_markdown(tb: dict[str, Any]) -> list[str]:
    from ._toolbox import markdown as toolbox_table

    return [toolbox_table(tb)]


def _throttle_markdown(th: dict[str, Any]) -> list[str]:
    from ._throttle import _tables

    return [_tables(th)]


def _replicas_markdown(rep: dict[str, Any]) -> list[str]:
    rt, cb, mem = rep["round_trips"], rep["cold_burst"], rep["memory_per_entry"]
    return [
        f"{rep['replicas']} agent replica processes, one `redis-server`; {rep['users']} users x "
        f"{rep['calls_per_user']} calls spread over the replicas, {rep['rounds']} interleaved "
        "rounds, with and without the shared (L2) cache.",
        "",
        "| figure | with the shared cache | without (local only) |",
        "|---|---|---|",
        f"| token POSTs (U = {rt['expected_with_l2']}) | {_miqr(rt['shared'], digits=0)} | "
        f"{_miqr(rt['local'], digits=0)} |",
        f"| cold burst POSTs ({cb['calls']} calls) | {_miqr(cb['shared'], digits=0)} | "
        f"{_miqr(cb['local'], digits=0)} |",
        f"| L2 hit µs / L1 hit µs | {_miqr(rep['l2_hit_us'], digits=0)} / "
        f"{_miqr(rep['l1_hit_us'], digits=0)} (ratio {_fmt(rep.get('l2_over_l1_ratio'), 1)}) "
        "| |",
        f"| Redis commands per L1 hit | {_fmt(rep.get('redis_commands_per_l1_hit'))} | |",
        f"| L2 entry: MEMORY USAGE / sealed value (bytes) | "
        f"{_miqr(mem['memory_usage_bytes'], digits=0)} / "
        f"{_miqr(mem['sealed_value_bytes'], digits=0)}; max over the value "
        f"{mem.get('over_sealed_value_bytes_max')} B (bound {mem.get('bound_bytes')} B) | |",
    ]


def _steps_markdown(r: dict[str, Any]) -> list[str]:
    """Every step of the run, in order, with its status and time."""
    ran = r.get("steps") or []
    lines = ["", "### Steps", "", "| step | latency | status | seconds |", "|---|---|---|---|"]
    seen = set()
    for st in ran:
        seen.add(st["step"])
        lines.append(
            f"| {st['step']} | {st.get('latency') or ''} | "
            f"{'ok' if st.get('ok') else 'FAILED'} | {st.get('seconds')} |"
        )
    for name in STEPS:
        if name not in seen:
            lines.append(f"| {name} | | not run | |")
    return lines


def _lifetime_markdown(lt: Any) -> list[str]:
    if not isinstance(lt, dict) or "posts_per_user_per_lifetime" not in lt:
        return ["", "### Over several token lifetimes (compressed)", "", _why_not(lt)]
    hit = lt.get("hit_latency_us", {})
    return [
        "",
        "### Over several token lifetimes (compressed)",
        "",
        f"{lt['users']} users, every access token (user and downstream) living "
        f"{lt['lifetime_s']} s, one call per user every {lt['period_s'] * 1e3:.0f} ms for "
        f"{lt['lifetimes']} lifetimes; each user renews its token {lt['renew_before_s']:.1f} s "
        f"before it expires; emulator latency {lt['emulator_latency_s'] * 1e3:.0f} ms. "
        f"{lt['calls']} calls with {lt['user_tokens']} user tokens: **{lt['obo_posts']} OBO "
        f"POSTs = {lt['posts_per_user_per_lifetime']:.2f} per user per lifetime**; "
        f"{lt['cache_refreshes']} refreshes; {lt['cache_misses']} misses (each token's first "
        f"call); **{lt.get('acquired_with_valid_token_cached', 'n/a')} calls waited on Entra "
        f"while a valid token was cached** ({lt['waited_with_valid_token_cached']} took at "
        f"least half a round trip); {lt['failures']} failed calls. A call on a cached token took "
        f"{_fmt(hit.get('median'), 0)} µs (median; p99 {_fmt(lt.get('hit_latency_p99_us'), 0)} "
        "µs), building a new `Caller` from the raw token each time.",
    ]


# --- charts ------------------------------------------------------------------------------------


def _color(key: str) -> str:
    return "#1f77b4" if "EntraAuth" in key else ("#bbb" if "no-op" in key else "#888")


def draw_charts(r: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    sw = r.get("sweep", {})
    if sw.get("by_users"):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for ax, axis, xlabel in (
            (axes[0], "by_users", f"users (concurrency {sw.get('fixed_concurrency')})"),
            (axes[1], "by_concurrency", f"concurrency ({sw.get('fixed_users')} users)"),
        ):
            styles = ["-", "--", "-.", ":", (0, (5, 1)), (0, (1, 1))]
            markers = ["o", "s", "^", "D", "v", "x"]
            for i, (name, pts) in enumerate(sw.get(axis, {}).items()):
                xs, ys = [p[0] for p in pts], [max(p[1], 0.8) for p in pts]
                ax.plot(
                    xs,
                    ys,
                    marker=markers[i % 6],
                    linestyle=styles[i % 6],
                    label=name,
                    linewidth=2.8 if name == OURS else 1.4,
                    markersize=7 if name == OURS else 5,
                )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(f"token POSTs ({sw.get('calls_per_user')} calls per user)")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle("Token POSTs to Entra per pattern")
        fig.tight_layout()
        fig.savefig(out / "token_posts.png", dpi=110)
        plt.close(fig)
        written.append("token_posts.png")
    oh = r.get("overhead", {})
    if "loopback" in oh:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        lp = oh["loopback"]["per_request_s"]
        keys = list(lp)
        axes[0].bar(
            range(len(keys)),
            [lp[k]["median"] * 1e6 for k in keys],
            yerr=[lp[k]["iqr"] * 1e6 / 2 for k in keys],
            color=[_color(k) for k in keys],
        )
        axes[0].set_xticks(range(len(keys)), [k.replace(" ", "\n", 1) for k in keys], fontsize=8)
        axes[0].set_ylabel("µs per request (median)")
        axes[0].set_title("loopback GET, cache hit")
        ip = oh["in_process"]["per_request_us"]
        keys = list(ip)
        axes[1].bar(
            range(len(keys)),
            [ip[k]["median"] for k in keys],
            yerr=[ip[k]["iqr"] / 2 for k in keys],
            color=[_color(k) for k in keys],
        )
        axes[1].set_xticks(range(len(keys)), [k.replace(" ", "\n", 1) for k in keys], fontsize=7)
        axes[1].set_ylabel("µs per request (median)")
        axes[1].set_title("in-process MockTransport")
        fig.suptitle("Overhead per request: EntraAuth vs a static Authorization header")
        fig.tight_layout()
        fig.savefig(out / "overhead.png", dpi=110)
        plt.close(fig)
        written.append("overhead.png")
    lags = {k: v.get("loop_lag", {}) for k, v in r.get("by_latency", {}).items()}
    if any("patterns" in v for v in lags.values()):
        fig, ax = plt.subplots(figsize=(9, 4))
        width = 0.8 / max(1, len(lags))
        for i, (label, ll) in enumerate(lags.items()):
            if "patterns" not in ll:
                continue
            names = ["floor (idle)", *ALL_NAMES]
            vals = [ll["floor"]["max_ms"]["median"]] + [
                _med(ll["patterns"], n, "max_ms") for n in ALL_NAMES
            ]
            ax.bar(
                [j + i * width for j in range(len(names))], vals, width, label=f"latency {label}"
            )
            ax.set_xticks(
                [j + width / 2 for j in range(len(names))], names, fontsize=7, rotation=15
            )
        ax.set_yscale("log")
        ax.set_ylabel("max event-loop lag, ms (median of rounds)")
        ax.set_title("Event-loop lag while cold users acquire at once")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "loop_lag.png", dpi=110)
        plt.close(fig)
        written.append("loop_lag.png")
    return written


def write_outputs(r: dict[str, Any], out: Path, *, charts: bool = True) -> str:
    out.mkdir(parents=True, exist_ok=True)
    if charts:
        try:
            r["charts"] = draw_charts(r, out)
        except Exception as exc:  # charts are a view; the figures stay in the JSON
            r["charts_error"] = repr(exc)
    md = markdown(r)
    (out / "latest.json").write_text(json.dumps(r, indent=1, default=str) + "\n")
    (out / "latest.md").write_text(md)
    return md


def update_readme(readme: Path, md: str, charts: list[str], rel: str = "results") -> None:
    """Replace the block between the results markers with this run's table and charts."""
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    text = readme.read_text()
    if start not in text or end not in text:
        return
    images = "\n".join(f"![{c}]({rel}/{c})" for c in charts)
    block = f"{start}\n{md.replace('## Results', '## Latest results', 1)}\n{images}\n{end}"
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    readme.write_text(head + block + tail)
