"""The harness of the portable-walkthrough suite, in layers. Each layer imports only from the
layers listed before it, apart from the two exceptions named below.

    core       errors, the step log, retries, subprocesses, the build cache, host facts, and the
               run settings (config.py)
    boxes      the guests: box recipes, the cached builder and its scripts, Fedora's downloaded
               boxes (download, signature check; machine/provision_vm.py provisions them once)
    subject    the service under test: its TOML spec, its portable images, the spec's own checks
    machine    one booted VM: Machine (NixOS-style verbs over SSH), the Vagrant backend, the
               Vagrantfile, saved guests, KVM or TCG, testinfra's host, the run lock and reaper
    load       the clients in the guest (ab, the probe, long-lived connections, HAProxy) and
               what they saw (timeline, latency)
    systemd    the portable service in the guest: its steps (portable.py, each one request to
               the guest program guest/portable.py), the scope (system or a user's manager) as
               a value, stop + start, sysupdate rollouts, and quirks.py (every
               systemd-version difference)
    report     summary.json/md and the timeline PNGs; the box matrix
               (python -m pytest_portable_upgrade.report.matrix)
    scenarios  the catalogue, run_scenario, verdict_of (the one judge) and the checks it is
               made of, the summary row (record.py)
    plugin     what a user installs: the pytest plugin (pytest11 entry point: options from
               core/config.py, hooks, the HTML report), the fixture ladder, a verdict turned
               into pytest's outcome (outcome.py: conclude, which evidence a test keeps), the
               scenario suite (plugin/suite), the ``portable-upgrade`` command and setup-host

The exceptions, each a real dependency (and no module imports in a circle):

- core/config.py names the default box and subject spec (boxes/recipes.py, subject/spec.py);
- subject/spec.py checks the scenario ids a spec names (scenarios/catalogue.py, imported when a
  spec is loaded).

plugin/fixtures.py builds the fixtures on top: settings, subject -> box, images -> machine ->
host -> service -> clean_service -> run_recorded. The default subject (images/) ships beside
it as ``pytest_portable_upgrade.walkthrough``. tests/unit/test_layers.py holds the code to this.
"""
