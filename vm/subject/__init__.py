"""The service under test: its spec (``spec``: the TOML file, everything the suite knows of it),
its portable images (``image`` with ``build-image.sh``: ready files, or built once and cached)
and the spec's own pytest checks (``user_checks``)."""
