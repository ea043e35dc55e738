"""Helpers shared by the test packages (importable as ``_support``: pytest's ``pythonpath``
puts ``tests/`` on ``sys.path``). Test modules import helpers from here or from their own
package's ``_*.py`` modules, never from another ``test_*.py`` module."""
