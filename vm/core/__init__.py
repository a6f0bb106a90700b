"""Basics every layer uses: errors, the step log, retries, subprocesses, the build cache, host
facts and the run settings (``config``: its defaults name a box and a subject spec)."""
