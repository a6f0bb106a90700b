"""This repository's own pytest configuration; the suite itself is the installed plugin.

The options, the fixture ladder (settings, subject -> box, images -> machine -> host ->
service -> clean_service -> run_recorded) and the report come from
``pytest_portable_upgrade.plugin``, which its ``pytest11`` entry point registers once the
package is installed (tox installs it, editable): this repository uses it exactly as a user's
does. ``tox -e integration`` runs the scenario suite the package ships
(``--pyargs pytest_portable_upgrade.plugin.suite``) and tests/integration, the harness's own
checks on the VM; ``tox -e unit`` boots nothing, and the plugin reads no setting for it.
"""

# The unit tests run small pytest sessions of their own (the plugin, the options, the report).
pytest_plugins = ["pytester"]
