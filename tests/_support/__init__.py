"""Helpers shared by the test packages (importable as ``_support``: pytest's ``pythonpath``
puts ``tests/`` on ``sys.path``): ``servers`` (uvicorn in a thread), ``tokens`` (a stand-in
issuer, unsigned JWTs), ``mcp_world`` (the emulator with many users, a recording MCP server, a
hosted agent, and their autouse fixtures), ``consent`` (the consent broker's environment),
``sizes`` (quick or ``ENTRA_SOAK=1`` full load sizes), ``parallel`` (the xdist worker groups).

A test module imports helpers from here or from its own package (its conftest, its ``_*.py``
modules), never from a ``test_*.py`` module or another test package
(``tests/test_suite_layout.py`` checks)."""
