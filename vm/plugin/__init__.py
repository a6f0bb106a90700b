"""The suite as a pytest plugin and a command: what a user installs.

``plugin.py`` is registered by the ``pytest11`` entry point (``portable_upgrade``): the options
(from core/config.py's SETTINGS), the hooks, the report. ``fixtures.py`` is the fixture ladder
(settings, subject -> box, images -> machine -> host -> service -> clean_service, and
``run_recorded``). ``suite/`` holds the scenario tests that ``portable-upgrade run`` (cli.py)
and ``tox -e integration`` run with ``pytest --pyargs pytest_portable_upgrade.plugin.suite``.
"""
