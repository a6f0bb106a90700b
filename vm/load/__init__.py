"""The clients in the guest and what they saw: ``load`` (ab, the probe and the long-lived
clients as transient units, started and stopped around the switch), ``ab`` (its argv and
report), ``timeline`` and ``latency`` (the probe's records, windows, gaps), ``long_lived``
(the host-side summary of the long-lived connections), ``haproxy`` (the proxy's config) and
``guest/`` (the scripts run in the guest: ``probe.py``, ``hold_connections.py``)."""
