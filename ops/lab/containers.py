"""Containers on a lab host's ContainAI engine, for trying the container gate of ``inv update``,
the stop hook and ``inv repair`` by hand: a busybox image imported offline, a volume at ``/data``."""

from __future__ import annotations

import re
import shlex
from typing import Any

from ops.errors import ConfigError, OpsError

#: The nested engine of a lab host (as a ContainAI host has it).
DOCKER = "docker -H unix:///var/run/containai-docker.sock"
IMAGE = "cai-lab-busybox"
_NAME_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$")

#: Import a busybox image into the nested engine unless it is there (no registry is needed).
IMAGE_SCRIPT = f"""set -e
if ! {DOCKER} image inspect {IMAGE} >/dev/null 2>&1; then
  rm -rf /tmp/cai-lab-r; mkdir -p /tmp/cai-lab-r/bin /tmp/cai-lab-r/data /tmp/cai-lab-r/etc /tmp/cai-lab-r/tmp
  cp /bin/busybox /tmp/cai-lab-r/bin/busybox
  for l in sh sleep cat echo date ls id sha256sum seq; do ln -s busybox /tmp/cai-lab-r/bin/$l; done
  printf 'root:x:0:0:root:/root:/bin/sh\\nagent:x:1000:1000::/home/agent:/bin/sh\\n' > /tmp/cai-lab-r/etc/passwd
  tar -C /tmp/cai-lab-r -c . | {DOCKER} import - {IMAGE} >/dev/null
  rm -rf /tmp/cai-lab-r
fi
"""


def run_script(name: str, managed: bool = True, label: str = "containai.managed") -> str:
    """The shell script that starts container ``name`` (a volume ``<name>-vol`` at /data, PID 1 a
    sleep loop that exits 0 on SIGTERM) on a lab host's nested engine."""
    if not _NAME_RE.match(name):
        raise ConfigError(f"invalid container name {name!r}", "use letters, digits, '_', '.', '-'")
    labels = f"--label {label}=true --label containai.ssh-port=0 " if managed else ""
    loop = "trap 'exit 0' TERM; while :; do sleep 0.2; done"
    return (IMAGE_SCRIPT + f"{DOCKER} run -d --name {name} --network none {labels}"
            f"-v {name}-vol:/data {IMAGE} sh -c {shlex.quote(loop)} >/dev/null\n")


def start(host: Any, name: str, managed: bool = True) -> None:
    """Start container ``name`` on lab host ``host``'s ContainAI engine (see :func:`run_script`)."""
    from ops.lab.hosts import run

    code, out, err = run(host, run_script(name, managed), timeout=300)
    if code != 0:
        last = (err.strip() or out.strip() or f"exit {code}").splitlines()[-1]
        raise OpsError(f"starting container {name} on lab host {host.name} failed: {last}",
                       f"inspect it with: ssh -F {host.ssh_config} {host.alias} {DOCKER} ps -a")
