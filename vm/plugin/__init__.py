"""The pytest plugin: the glue between the harness and pytest's outcomes, fixtures and hooks."""
