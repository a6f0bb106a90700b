"""What a run leaves behind: ``report`` (summary.json, summary.md, the timeline PNGs) and
``matrix`` (one run per box, joined into matrix.md/json:
``python -m pytest_portable_upgrade.report.matrix``).

Nothing is imported here: the nightly workflow runs
``python -m pytest_portable_upgrade.report.matrix join`` with the standard library only."""
