"""What a run leaves behind: ``report`` (summary.json, summary.md, the timeline PNGs) and
``matrix`` (one run per box, joined into matrix.md/json: ``python -m vm.report.matrix``).

Nothing is imported here: the nightly workflow runs ``python -m vm.report.matrix join`` with
the standard library only."""
