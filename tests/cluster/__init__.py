"""The cluster tests: several hosts (Linux namespaces), one workspace, one PostgreSQL (SOP_CLUSTER=1 only).

A package, so that its conftest is the module ``cluster.conftest`` and never
stands in for ``tests/conftest.py`` as ``conftest`` when the whole suite runs.
"""
