"""The lab: a private Docker engine, an offline-built lab host image and disposable ContainAI hosts
running systemd as PID 1, reached over SSH exactly as a Lima VM or a WSL2 host is."""
