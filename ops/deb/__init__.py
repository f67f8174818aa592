"""Sysbox packaging: control-file patching (fuse -> fuse3), .deb inspection, verification and builds.

Modules: ``control`` (format-preserving control edits), ``inspect`` (reading a .deb with dpkg-deb),
``verify`` (the checks of ``inv pkg.verify-deb`` and the apt install check), ``runc`` (the version the
packaged sysbox-runc reports against the package Version), ``version`` (the package Version and its
dpkg ordering against upstream's and ContainAI's published packages), ``sources`` (the Sysbox
superproject: pin, recursive clone, required commits, VERSION marker, the packager's sources link,
the Docker check), ``build`` (the release build, repacking and publishing).
"""
