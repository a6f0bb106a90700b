"""The scenarios: ``catalogue`` (every ``Scenario`` and what it expects), ``run``
(``run_scenario``: attach, load, switch, measure), ``verdict`` (``verdict_of``, the one judge),
``checks`` (the pure checks a verdict is made of) and ``record`` (a run's summary row)."""
