"""The portable service in the guest: ``portable`` (the steps: attach, observe, reattach, stop +
start, rollout, reset, the clean check; each one request to the guest program
``guest/portable.py``), ``scope`` (the system's manager or a user's, a value every step takes),
``stop_start`` (the stop + start upgrade), ``sysupdate`` (the rollout units of
systemd-sysupdate) and ``quirks`` (every systemd-version difference the suite acts on)."""
