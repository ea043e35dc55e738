"""Search text for secrets the emulator issued: whole, and as any fragment of 16+ characters."""

from __future__ import annotations

import traceback
from collections.abc import Iterable

FRAGMENT = 16


def fragments(secrets: Iterable[str]) -> dict[str, str]:
    """Every 16-character window of every secret (or the whole secret, if shorter), mapped to
    a label of its secret that names no part of it."""
    out: dict[str, str] = {}
    for index, secret in enumerate(sorted(s for s in secrets if s)):
        label = f"secret #{index} ({len(secret)} chars, starts {secret[:3]!r})"
        if len(secret) <= FRAGMENT:
            out[secret] = label
            continue
        for start in range(len(secret) - FRAGMENT + 1):
            out.setdefault(secret[start : start + FRAGMENT], label)
    return out


def leaks(blob: str, secrets: Iterable[str]) -> list[str]:
    """The labels of the secrets found in ``blob`` (whole or a 16+ character fragment)."""
    table = fragments(secrets)
    short = {s: label for s, label in table.items() if len(s) < FRAGMENT}
    found = {label for s, label in short.items() if s in blob}
    for start in range(max(len(blob) - FRAGMENT + 1, 0)):
        label = table.get(blob[start : start + FRAGMENT])
        if label is not None:
            found.add(label)
    return sorted(found)


def error_text(exc: BaseException) -> str:
    """What ``logger.exception()`` and error reporters show: the chain and the attributes."""
    parts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    seen: BaseException | None = exc
    depth = 0
    while seen is not None and depth < 20:
        parts.append(repr(vars(seen)) if hasattr(seen, "__dict__") else "")
        parts.extend(repr(a) for a in seen.args)
        seen = seen.__cause__ or seen.__context__
        depth += 1
    return "\n".join(parts)


def where(blob: str, secrets: Iterable[str], width: int = 60) -> list[str]:
    """Context around each leaked fragment, the fragment itself replaced by its label."""
    table = fragments(secrets)
    out: list[str] = []
    for start in range(max(len(blob) - FRAGMENT + 1, 0)):
        if blob[start : start + FRAGMENT] in table:
            before = blob[max(start - width, 0) : start]
            after = blob[start + FRAGMENT : start + FRAGMENT + width]
            out.append(f"{before}<{table[blob[start : start + FRAGMENT]]}>{after}")
            if len(out) >= 5:
                break
    return out
