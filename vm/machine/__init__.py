"""One booted VM: ``machine`` (Machine, the NixOS-style verbs over SSH), ``vagrant_backend``
(vagrant up or restore, destroy), ``vagrantfile`` (the rendered Vagrantfile), ``saved_guest``
(the booted guest saved once per box), ``accel`` (KVM or TCG), ``guest_host`` (testinfra's
``host`` over the Machine's SSH), ``runs`` (the run lock and the reaper of dead runs) and
``provision_vm`` (a downloaded Fedora box provisioned once into a derived box)."""
