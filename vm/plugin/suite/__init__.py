"""The scenario tests: each runs one scenario of the catalogue through ``run_recorded`` and
concludes on its verdict. ``portable-upgrade run`` runs them against the spec it is given;
your own tests can use the same fixtures (docs/plugin.md)."""
