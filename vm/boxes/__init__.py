"""The guests a run can boot: box recipes (``recipes``), the cached builder (``builder``, with
``build-box.sh`` and ``pack-box.sh``), and Fedora's downloaded boxes (``fedora``: download and
signature check; ``fedora_box`` with ``provision``: provisioned once into a derived box)."""
