"""``ENTRA_PASSTHROUGH_WARNING_INTERVAL`` is read when the library is imported. A value it does
not take (not a number, negative, ``nan``, ``inf``: after the first burst an identical warning
was never logged again for the process's life) is one WARNING naming the variable, never the
value, and the default 10 s is used; a number from 0 to a day is taken as it is.

One value refused, one taken and the variable unset are each a fresh interpreter importing the
library (the variable is read at import). The other values are read in this process the way the
import reads them: a new ``WarningCoalescer()`` with the variable set, its warning captured as a
process without logging configured would print it on stderr."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from _support.cli_run import logged_as_stderr
from entra_passthrough._otel import WARNING_BURST, WarningCoalescer

SECRET = "S3cretPw0rdXYZ"
_PROBE = (
    "import json, logging, entra_passthrough\n"
    "from entra_passthrough._otel import COALESCER, WARNING_BURST\n"
    "log = logging.getLogger('entra_passthrough.chain')\n"
    "passed = sum(COALESCER.filter(log.makeRecord(log.name, logging.WARNING, 'f', 1, 'same', (),"
    " None)) for _ in range(WARNING_BURST + 20))\n"
    "print(json.dumps({'interval': COALESCER.interval, 'passed': passed,"
    " 'burst': WARNING_BURST}))\n"
)


#: The values a fresh interpreter imports the library with (the others are read in process).
IN_A_PROCESS = ("inf", "2.5", "")


def _import_with(value: str) -> tuple[dict[str, float], str]:
    if value not in IN_A_PROCESS:
        return _read_in_process(value)
    env = {**os.environ, "ENTRA_PASSTHROUGH_WARNING_INTERVAL": value}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def _read_in_process(value: str) -> tuple[dict[str, float], str]:
    """What ``_PROBE`` prints and the stderr it leaves, with the coalescer the import makes
    (``WarningCoalescer()``) made here with the variable set."""
    with pytest.MonkeyPatch.context() as mp, logged_as_stderr() as stderr:
        mp.setenv("ENTRA_PASSTHROUGH_WARNING_INTERVAL", value)
        coalescer = WarningCoalescer()
    log = logging.getLogger("entra_passthrough.chain")
    passed = sum(
        coalescer.filter(log.makeRecord(log.name, logging.WARNING, "f", 1, "same", (), None))
        for _ in range(WARNING_BURST + 20)
    )
    seen = {"interval": coalescer.interval, "passed": passed, "burst": WARNING_BURST}
    return seen, stderr.getvalue()


@pytest.mark.parametrize("value", ["inf", "1e400", "nan", "-5", "86401", SECRET, "10s"])
def test_a_value_it_does_not_take_is_one_warning_and_the_default(value: str) -> None:
    seen, stderr = _import_with(value)
    assert seen["interval"] == 10.0
    # Coalescing still works: the burst passes, the rest is held back within the interval.
    assert seen["passed"] == seen["burst"]
    assert stderr.count("ENTRA_PASSTHROUGH_WARNING_INTERVAL") == 1, stderr
    assert value not in stderr.replace("ENTRA_PASSTHROUGH_WARNING_INTERVAL", "")
    assert "Fix:" in stderr


@pytest.mark.parametrize(("value", "interval"), [("0", 0.0), ("2.5", 2.5), (" 86400 ", 86400.0)])
def test_a_number_in_range_is_taken(value: str, interval: float) -> None:
    seen, stderr = _import_with(value)
    assert seen["interval"] == interval
    assert "ENTRA_PASSTHROUGH_WARNING_INTERVAL" not in stderr


def test_unset_is_the_default() -> None:
    seen, stderr = _import_with("")
    assert seen["interval"] == 10.0
    assert "ENTRA_PASSTHROUGH_WARNING_INTERVAL" not in stderr
