"""The portable service in the guest: ``portable`` (attach, reattach, observe, reset),
``stop_start`` (the stop + start upgrade), ``user_portable`` (attached for a user's manager),
``sysupdate`` (the rollout units of systemd-sysupdate) and ``quirks`` (every systemd-version
difference the suite acts on)."""
