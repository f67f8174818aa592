"""The lab: a private Docker engine, an offline-built lab host image and disposable ContainAI hosts
running systemd as PID 1, reached over SSH exactly as a Lima VM or a WSL2 host is."""

# Kept here, free of imports, so the task layer can show them in --help at no start-up cost.
#: The Sysbox version of a lab host's older install and of the bundle that upgrades it.
OLD_SYSBOX = "0.6.6+containai.20250101"
NEW_SYSBOX = "0.6.7+containai.20260101"
#: The dockerd bundle versions of the same (the binaries are Debian's docker.io either way).
OLD_DOCKERD = "20.10.24"
NEW_DOCKERD = "20.10.99"
