# Two commands a newcomer needs: `make demo` and `make test`. Both create .venv if needed;
# `make demo` installs only what the demo needs (the 'demo' extra), `make test` everything
# (docs included: tests/docs builds the site).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
DOCS_STAMP := $(VENV)/.installed-docs

.PHONY: test demo docs docs-serve lint typecheck pytest soak hygiene bench bench-quick clean

# The test environment is installed with uv (from PyPI, into the venv): ~6 s where pip takes
# ~35 s on a fresh clone (measured), a third of `make test`'s time budget. Both resolvers give a
# valid set that passes the suite; they differ where pip takes a pre-release of a dependency a
# pre-release asks for (azure-ai-agentserver-core 2.3.0b2 under pip, 2.2.0 under uv, today).
# `make demo` keeps pip: it is what users run. --compile-bytecode: eight test workers would
# otherwise each compile the site-packages they import.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python --compile-bytecode -e '.[all,dev,docs]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests examples bench noxfile.py mkdocs_hooks.py conftest.py
	$(BIN)/ruff format --check src tests examples bench noxfile.py mkdocs_hooks.py conftest.py

typecheck: $(STAMP)
	$(BIN)/mypy

# Parallel (pytest-xdist): most of the suite waits on sockets and subprocesses, so eight workers
# beat four even on two cores (measured on the two-core machine, warm: 96 s with 4 workers, 90 s
# with 6, 80-92 s with 8; beyond that the suite is bound by its CPU, ~140 s of it). Tests that
# share a machine-wide resource carry an xdist_group mark (--dist loadgroup keeps each group on
# one worker); the `slow` ones start first (conftest.py).
# Bytecode is written (Python's default): with PYTHONDONTWRITEBYTECODE set, every worker of every
# run rewrites and compiles the whole suite again (measured: 19 s of CPU to collect on four
# workers, 10 s once the rewritten modules are cached).
# One collection in one process first writes the rewritten test modules' bytecode once, instead
# of eight workers each compiling them on a fresh clone (~3 s of CPU each; ~2 s when warm).
PYTEST_WORKERS ?= 8
pytest: $(STAMP)
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -p no:cacheprovider --collect-only -q >/dev/null
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadgroup

# lint first (about a second), then mypy beside the suite: mypy is one process (10 s of CPU on a
# fresh clone, no cache yet) while the suite's workers mostly wait on sockets and subprocesses.
test: lint
	$(MAKE) --no-print-directory -j2 typecheck pytest

# The load tests at full size (ENTRA_SOAK=1; the quick sizes run in `make test`): the MCP tool
# under churn (200 users x 100 calls at concurrency 64, restarts mid-burst, short token lifetimes,
# small pools) and per-user isolation (200 users x 100 calls, shared tool and per-user pool).
soak: $(STAMP)
	ENTRA_SOAK=1 $(BIN)/pytest -p no:cacheprovider -o timeout=3600 tests/churn \
		tests/integration/test_isolation.py
	HYPOTHESIS_PROFILE=soak $(BIN)/pytest -p no:cacheprovider -o timeout=3600 tests/security/test_fuzz.py

# Secret hygiene: the suites with every logger at DEBUG and spans captured; every token, secret,
# assertion and code the emulator issued is searched for in logs, spans, errors and reprs
# (tests/security/hygiene_plugin.py). Figures in bench/results/hygiene.json; a find fails.
hygiene: $(STAMP)
	PYTHONPATH=tests HYGIENE_REPORT=bench/results/hygiene.json $(BIN)/pytest -q -p no:cacheprovider \
		-p security.hygiene_plugin tests/resolve tests/apply tests/consent tests/server \
		tests/capture tests/security tests/emulator tests/doctor tests/toolbox tests/scale_out

$(VENV)/bin/python:
	@echo "==> creating $(VENV) with $(PY)"
	$(PY) -m venv $(VENV)

# No --quiet: pip prints each package as it goes (a minute or two on a fresh machine).
$(DEMO_STAMP): pyproject.toml | $(VENV)/bin/python
	@echo "==> installing entra-passthrough with the 'demo' extra (agent-framework, consent, mcp, testing)"
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[demo]'
	touch $@

demo: $(DEMO_STAMP)
	@echo "==> running the demo: emulator, MCP server, two hosted agents and a consent broker on loopback"
	$(BIN)/entra-passthrough demo

# The test environment (`make test`) already has the docs extra: installed again only without it.
$(DOCS_STAMP): pyproject.toml | $(VENV)/bin/python
	@if [ -f $(STAMP) ] && [ $(STAMP) -nt pyproject.toml ]; then \
		echo "==> the 'docs' extra is in the test environment"; \
	else \
		echo "==> installing the 'docs' extra (mkdocs-material, mkdocstrings)"; \
		$(BIN)/python -m pip install -e '.[docs]'; \
	fi
	touch $@

docs: $(DOCS_STAMP)
	$(BIN)/mkdocs build --strict

docs-serve: $(DOCS_STAMP)
	$(BIN)/mkdocs serve

bench: $(STAMP)
	$(BIN)/python -m bench

bench-quick: $(STAMP)
	$(BIN)/python -m bench --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache site
