"""OpenSSH's own sshd on loopback for the tests: a free port, test keys, the config and the wait until
it listens (shared by the host-key, engine-channel and shell tests)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    """A port that is free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def keygen(path: Path, kind: str = "ed25519") -> Path:
    """A fresh key pair of ``kind`` at path (and path.pub)."""
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "cai-test", "-f", str(path)], check=True,
                   stdin=subprocess.DEVNULL)
    return path


def config_text(port: int, host_keys: list[Path], authorized_keys: Path, streamlocal: bool = True,
                log_level: str = "ERROR") -> str:
    """An sshd_config for root logins with a key on 127.0.0.1:port (no PAM, no passwords)."""
    return "\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", *(f"HostKey {k}" for k in host_keys), "PidFile none",
        f"AuthorizedKeysFile {authorized_keys}", "StrictModes no", "UsePAM no",
        "PermitRootLogin prohibit-password", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "AllowUsers root", f"AllowStreamLocalForwarding {'yes' if streamlocal else 'no'}",
        f"LogLevel {log_level}", "",
    ])


def start(config: Path, port: int, log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``sshd -D`` with ``config`` (its log into ``log``, else discarded) and wait until it listens."""
    os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation directory
    argv = [shutil.which("sshd") or "/usr/sbin/sshd", "-D", "-f", str(config)]
    argv += ["-E", str(log)] if log is not None else ["-e"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL if log is None else None)
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, "sshd exited at start"
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        assert time.monotonic() < deadline, "sshd did not listen"
        time.sleep(0.05)
