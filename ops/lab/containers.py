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



def image_script(tag: str = IMAGE, docker: str = DOCKER) -> str:
    """Shell that imports a busybox image ``tag`` into the nested engine (``docker``: its CLI) unless it
    is there (no registry is needed): root and agent (1000:1000) in /etc/passwd, /data for a volume."""
    return f"""set -e
if ! {docker} image inspect {tag} >/dev/null 2>&1; then
  r=$(mktemp -d); chmod 0755 "$r"; mkdir -p "$r/bin" "$r/data" "$r/etc" "$r/tmp"
  cp /bin/busybox "$r/bin/busybox"
  for l in sh sleep cat echo date ls id sha256sum seq; do ln -s busybox "$r/bin/$l"; done
  printf 'root:x:0:0:root:/root:/bin/sh\\nagent:x:1000:1000::/home/agent:/bin/sh\\n' > "$r/etc/passwd"
  tar -C "$r" -c . | {docker} import - {tag} >/dev/null
  rm -rf "$r"
fi
"""


def run_script(name: str, managed: bool = True, docker: str = DOCKER) -> str:
    """The shell script that starts container ``name`` (a volume ``<name>-vol`` at /data, PID 1 a
    sleep loop that exits 0 on SIGTERM) on a lab host's nested engine (``docker``: its CLI).

    It names ``--runtime runc``: Sysbox cannot run here, and the containai layout's default runtime
    is sysbox-runc (whose lab stand-in only answers ``--version``)."""
    if not _NAME_RE.match(name):
        raise ConfigError(f"invalid container name {name!r}", "use letters, digits, '_', '.', '-'")
    labels = "--label containai.managed=true --label containai.ssh-port=0 " if managed else ""
    loop = "trap 'exit 0' TERM; while :; do sleep 0.2; done"
    return (image_script(IMAGE, docker) + f"{docker} run -d --name {name} --network none --runtime runc "
            f"{labels}--stop-timeout 100 -v {name}-vol:/data {IMAGE} sh -c {shlex.quote(loop)} >/dev/null\n")


def start(host: Any, name: str, managed: bool = True) -> None:
    """Start container ``name`` on lab host ``host``'s ContainAI engine (see :func:`run_script`)."""
    from ops.lab.hosts import run

    docker = getattr(host, "docker", DOCKER)
    code, out, err = run(host, run_script(name, managed, docker), timeout=300)
    if code != 0:
        last = (err.strip() or out.strip() or f"exit {code}").splitlines()[-1]
        raise OpsError(f"starting container {name} on lab host {host.name} failed: {last}",
                       f"inspect it with: ssh -F {host.ssh_config} {host.alias} {docker} ps -a")
