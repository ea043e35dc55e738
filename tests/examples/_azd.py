"""How azd expands the values of an ``azure.yaml``, ported from its source (Azure/azure-dev,
checked at ae35809f4, August 2026, and the tags azure-dev-cli_1.31.1 / _1.31.2) for the tests of
examples/hosted_agent. Two expanders, each where azd uses it:

* ``envsubst``: a service's ``env:`` values. azd core converts every service for the
  extensions (``cli/azd/pkg/project/mapper_registry.go``, the ``*ServiceConfig ->
  *azdext.ServiceConfig`` mapper: ``src.Environment.Expand``, error "envsubst service
  environment: ...") through ``osutil.ExpandableMap.Expand`` -> ``ExpandableString.Envsubst``
  (``cli/azd/pkg/osutil/expandable_map.go``, ``expandable_string.go``), which is
  ``envsubst.Eval`` of github.com/drone/envsubst v1.0.3 (azd's go.mod), with no masking of
  Foundry's ``${{...}}``.
* ``foundry_expand``: the Foundry extensions' own fields (a connection's ``target``,
  ``credentials``, ``metadata``: ``collectConnections`` / ``maybeExpand`` in
  ``cli/azd/extensions/azure.ai.projects/internal/synthesis/synthesizer.go``) go through
  ``foundry.ExpandEnv`` (``cli/azd/pkg/foundry/templating.go``): each ``${{...}}`` span is
  masked with a sentinel, the rest is ``envsubst.Eval``-ed, the spans are restored.

``envsubst`` is the subset of drone/envsubst's grammar (``parse/parse.go``: ``parseAny``,
``parseFunc``; ``parse/scan.go``: ``scanEscaped``, ``acceptIdent``) these files use: text with
the escapes ``$$`` -> ``$`` and ``\\\\``/``\\/``, and ``${NAME}``. ``$NAME`` without braces is
text (the scanner only opens on ``${``). A ``${`` not followed by a name is drone's
``ErrParseVariableName`` ("unable to parse variable name"), a name not closed by ``}`` its
``ErrMissingClosingBrace``; the shell operators after a name (``${A:-b}``, ``${A/x/y}``,
``${#A}`` ...) are not ported and raise ``NotPorted``, so a file that starts using one fails
here rather than pass unchecked.
"""

from __future__ import annotations

import re
from collections.abc import Callable

#: ``foundryTemplatePattern`` in cli/azd/pkg/foundry/templating.go.
FOUNDRY_SPAN = re.compile(r"\$\{\{.*?\}\}", re.DOTALL)
#: ``foundrySentinelBase``.
SENTINEL = "azdFoundryTemplateSpan_"
#: ``connectionRefPattern`` in cli/azd/extensions/azure.ai.agents/internal/cmd/
#: connection_credentials.go: how azd reads a Foundry connection reference.
CONNECTION_REF = re.compile(r"\$\{\{connections\.([^.]+)\.credentials\.([^}]+)\}\}")


class EnvsubstError(ValueError):
    """drone/envsubst refused the value (its error text)."""


class NotPorted(NotImplementedError):
    """A drone/envsubst construct this port does not implement."""


def _ident(ch: str) -> bool:
    # acceptIdent: unicode.IsLetter(r) || unicode.IsDigit(r) || r == '_'
    return ch.isalpha() or ch.isdecimal() or ch == "_"


def envsubst(value: str, mapping: Callable[[str], str]) -> str:
    """drone/envsubst v1.0.3 ``Eval(value, mapping)``, for the subset described above."""
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        ch = value[i]
        nxt = value[i + 1] if i + 1 < n else ""
        if ch == "$" and nxt == "{":
            i += 2
            if i < n and value[i] == "#":
                raise NotPorted(f"${{#...}} (length) in {value!r}")
            start = i
            while i < n and _ident(value[i]):
                i += 1
            if i == start:
                raise EnvsubstError("unable to parse variable name")
            name = value[start:i]
            if i < n and value[i] in ":=,^/#%":
                raise NotPorted(f"${{{name}{value[i]}...}} in {value!r}")
            if i >= n or value[i] != "}":
                raise EnvsubstError("missing closing brace")
            out.append(mapping(name))
            i += 1
        elif ch == "$" and nxt == "$":  # scanEscaped: the first $ is dropped, the second kept
            out.append("$")
            i += 2
        elif ch == "\\" and nxt in ("\\", "/"):
            out.append(nxt)
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def foundry_expand(value: str, mapping: Callable[[str], str]) -> str:
    """azd's ``foundry.ExpandEnv``: ``${{...}}`` spans survive, the rest is ``envsubst``-ed."""
    spans = FOUNDRY_SPAN.findall(value)
    if not spans:
        return envsubst(value, mapping)
    sentinel = SENTINEL
    while sentinel in value:
        sentinel += "_"
    counter = iter(range(len(spans)))
    masked = FOUNDRY_SPAN.sub(lambda _m: f"{sentinel}{next(counter)}_", value)
    expanded = envsubst(masked, mapping)
    for index, span in enumerate(spans):
        expanded = expanded.replace(f"{sentinel}{index}_", span, 1)
    return expanded
