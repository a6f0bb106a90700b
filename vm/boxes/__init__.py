"""The guests a run can boot: box recipes (``recipes``), what every box is (``vagrant_boxes``),
the cached builder (``builder``, with ``build-box.sh`` and ``pack-box.sh``), and Fedora's
downloaded boxes (``fedora``: download and signature check; ``fedora_box``: fetched, and named
after what ``provision`` installs; machine/provision_vm.py provisions them once)."""
