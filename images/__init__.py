"""The default subject, shipped as ``pytest_portable_upgrade.walkthrough``: walkthrough.toml
(its spec), server.py (the walkthrough server) and its units."""
