"""The switch-capacity map as a pytest run (``portable-upgrade capacity``, ``tox -e
capacity``): one test per point of the grid, one VM, capacity.md/json/png in the run's
artifacts (docs/capacity.md)."""
