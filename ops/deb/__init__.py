"""Sysbox packaging: control-file patching (fuse -> fuse3), .deb inspection, verification and builds.

Modules: ``control`` (format-preserving control edits), ``inspect`` (reading a .deb with dpkg-deb),
``verify`` (the checks of ``inv pkg.verify-deb`` and the apt install check), ``runc`` (the version the
packaged sysbox-runc reports against the package Version, and the build's version variables),
``build`` (repacking a .deb with a version marker and building from the packager).
"""
