"""The update applier and the whole flow: facts -> plan -> gate -> apply -> gather again.

Only this module changes a host. Every command goes through the target's Context (``ops.update.hostio``)
so the same code drives the local host, a WSL2 host and a Lima VM. The journal is written on the
target before any container is stopped; a failure after that restarts the stopped containers when it
can, and otherwise leaves them recorded for ``inv update --resume``.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ops.config import CaiConfig
from ops.errors import EngineError, OpsError, RefusedError
from ops.layout import LIMA_VM, Layout
from ops.units import ENGINE_UNIT, GUARD_UNIT, RenderedFile
from ops.update import journal as jr
from ops.update import lock as lk
from ops.update import plan as pl
from ops.update import rollback as rb
from ops.update import timeouts as tm
from ops.update.facts import DOWN_STATES, UpdateFacts, gather, running_containers
from ops.update.hostio import Host

Emit = Callable[[str], None]
_SHA_RE = re.compile(r"^([0-9a-fA-F]{64})\s+\*?(\S.*)$")


@dataclass(frozen=True)
class Options:
    """The flags of ``inv update``."""

    stop_containers: bool = False
    dry_run: bool = False
    force: bool = False
    resume: bool = False
    interactive: bool = False  # a TTY is attached: a prompt may be shown
    progress: bool = False  # show per-container progress lines


# --- checksums ----------------------------------------------------------------------------------------

def parse_sha256_file(text: str, name: str) -> str:
    """Pure parser of a ``sha256sum`` line for ``name`` (or the only line)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    found = []
    for line in lines:
        match = _SHA_RE.match(line)
        if match:
            found.append((match.group(1).lower(), Path(match.group(2).strip()).name))
        elif re.fullmatch(r"[0-9a-fA-F]{64}", line):
            found.append((line.lower(), name))
    for digest, file in found:
        if file == name:
            return digest
    if len(found) == 1:
        return found[0][0]
    raise OpsError(f"no sha256 for {name} in its .sha256 file", "regenerate it with sha256sum")


def sha256_of(path: Path) -> str:
    """The sha256 of a local file."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def checked_digest(path: Path) -> str:
    """Check a bundled file against ``<file>.sha256`` beside it; return the digest."""
    sums = path.with_name(path.name + ".sha256")
    if not path.is_file():
        raise OpsError(f"bundled file {path} is missing", "fix cai.bundle_dir or restore the bundle")
    try:
        expected = parse_sha256_file(sums.read_text(encoding="utf-8"), path.name)
    except FileNotFoundError:
        raise OpsError(f"no checksum file {sums.name} beside {path}",
                       "publish the bundle with its .sha256 files (sha256sum FILE > FILE.sha256)") from None
    actual = sha256_of(path)
    if actual != expected:
        raise OpsError(f"checksum mismatch for {path.name}: expected {expected[:12]}..., got {actual[:12]}...",
                       "the bundle is damaged or was changed; download it again")
    return actual


def remote_check(host: Host, remote: str, digest: str) -> None:
    """Check a staged file's sha256 on the target (the copy arrived whole)."""
    out = host.sh(f"sha256sum {shlex.quote(remote)}", what="sha256sum")
    if out.split()[:1] != [digest]:
        raise OpsError(f"the copy of {Path(remote).name} on {host.name} does not match its checksum",
                       "check free space on the target and rerun")


def preflight(p: pl.Plan) -> dict[str, str]:
    """Check the checksums of every bundled file the plan installs; path -> sha256."""
    digests = {}
    for step in p.steps:
        for key in ("tarball", "deb"):
            if key in step.data and step.data[key]:
                digests[str(step.data[key])] = checked_digest(Path(step.data[key]))
    return digests


# --- steps --------------------------------------------------------------------------------------------

def stage(host: Host, local: Path, digest: str = "") -> str:
    """Copy a bundled file to the target's staging directory and check its sha256 there."""
    digest = digest or checked_digest(local)
    remote = host.upload(local, local.name)
    remote_check(host, remote, digest)
    return remote


def unpacked_dir(conf: CaiConfig, version: str) -> str:
    """Where the bundle is unpacked before the containers stop (beside its versioned directory)."""
    return f"{conf.opt_dir.rstrip('/')}/docker/.{version}.cai-new"


def unpack_dockerd(host: Host, conf: CaiConfig, staged: str, version: str) -> None:
    """Unpack the staged bundle next to ``<opt_dir>/docker/<version>/`` (under a temporary name) and
    check it holds dockerd. Nothing the engine runs on changes, so this happens before the
    containers stop; :func:`switch_dockerd` then only renames."""
    q = shlex.quote
    script = f"""set -e
tmp={q(unpacked_dir(conf, version))}; tgz={q(staged)}
rm -rf "$tmp"; mkdir -p "$tmp"
tar -xzf "$tgz" -C "$tmp" --no-same-owner
if [ ! -x "$tmp/docker/dockerd" ]; then echo "the tarball has no docker/dockerd" >&2; rm -rf "$tmp"; exit 3; fi
"""
    host.sh(script, what=f"unpacking the dockerd bundle {version}")


def discard_unpacked(host: Host, conf: CaiConfig, version: str) -> None:
    """Remove an unpacked bundle that was not switched to (best effort)."""
    with contextlib.suppress(OpsError):
        host.probe(f"rm -rf {shlex.quote(unpacked_dir(conf, version))}")


def install_dockerd(host: Host, conf: CaiConfig, tarball: Path, version: str, digest: str = "",
                    staged: str = "") -> None:
    """Unpack the bundle to ``<opt_dir>/docker/<version>/``, switch the links atomically, write VERSION."""
    remote = staged or stage(host, tarball, digest)
    unpack_dockerd(host, conf, remote, version)
    switch_dockerd(host, conf, version)


def switch_dockerd(host: Host, conf: CaiConfig, version: str) -> None:
    """Move the unpacked bundle to ``<opt_dir>/docker/<version>/``, switch every link of
    ``<opt_dir>/bin`` atomically (new link, rename), drop links into older versions it no longer has,
    write VERSION atomically last."""
    q = shlex.quote
    opt = conf.opt_dir.rstrip("/")
    script = f"""set -e
opt={q(opt)}; ver={q(version)}
dest="$opt/docker/$ver"; tmp="$opt/docker/.$ver.cai-new"
if [ ! -x "$tmp/docker/dockerd" ]; then echo "the unpacked bundle $tmp is gone" >&2; exit 3; fi
mkdir -p "$opt/bin"
rm -rf "$dest.cai-old"
if [ -e "$dest" ]; then mv "$dest" "$dest.cai-old"; fi
mv "$tmp/docker" "$dest"; rm -rf "$tmp" "$dest.cai-old"
for f in "$dest"/*; do
  n=$(basename "$f")
  ln -sfn "$f" "$opt/bin/.$n.cai-new"
  mv -Tf "$opt/bin/.$n.cai-new" "$opt/bin/$n"
done
for l in "$opt"/bin/*; do
  [ -L "$l" ] || continue
  t=$(readlink "$l")
  case "$t" in "$opt/docker/$ver/"*) ;; "$opt/docker/"*) rm -f "$l" ;; esac
done
printf '%s\\n' "$ver" > "$opt/.VERSION.cai-new"
mv -f "$opt/.VERSION.cai-new" "$opt/VERSION"
"""
    host.sh(script, what=f"installing the dockerd bundle {version}")


def sysbox_invocation(host: Host) -> tuple[str, str]:
    """(InvocationID, ActiveState) of sysbox.service: a new InvocationID after the package install
    means its scripts restarted Sysbox, on the new binaries."""
    _code, out, _err = host.probe("systemctl show -p InvocationID -p ActiveState sysbox.service")
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return values.get("InvocationID", "").strip(), values.get("ActiveState", "").strip()


#: How the bundled .deb is installed (and, with -s, simulated first): apt resolves its dependencies.
APT_INSTALL = ("DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
               "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold")


def stage_sysbox(host: Host, deb: Path, digest: str = "") -> str:
    """Copy the bundled .deb to the target, check its sha256 there, and have apt simulate installing
    it, all before anything is stopped: a package apt cannot install (missing lists or sources, a
    conflict) is refused while nothing has changed. Returns the staged path."""
    remote = stage(host, deb, digest)
    q = shlex.quote
    host.sh(f"chmod 0644 {q(remote)} && chmod 0755 {q(str(Path(remote).parent))}", what="chmod")
    code, out, err = host.probe(f"{APT_INSTALL} -s {q(remote)}", timeout=300)  # the real run's options
    if code != 0:
        raise OpsError(f"apt-get install {deb.name} would fail on {host.name} ({apt_reason(code, out, err)}); "
                       "nothing was changed",
                       "run `apt-get update` there and check its apt sources (the package needs fuse3 and "
                       "its other dependencies from them), then rerun")
    # fetch what the package needs into apt's cache now, so the install while the containers are
    # down downloads nothing
    code, out, err = host.probe(f"{APT_INSTALL} --download-only {q(remote)}", timeout=tm.APT_BASE)
    if code != 0:
        raise OpsError(f"apt-get could not download what {deb.name} needs on {host.name} "
                       f"({apt_reason(code, out, err)}); nothing was changed",
                       "check the host's apt sources and its network, then rerun")
    return remote


def apt_reason(code: int, out: str, err: str) -> str:
    """Pure: the most telling line of a failed apt-get run (an unmet dependency before apt's summary)."""
    unmet = [line.strip() for line in out.splitlines() if "Depends:" in line or "Conflicts:" in line]
    if unmet:
        return unmet[0][:300]
    tail = [line.strip() for line in (err or out).strip().splitlines() if line.strip()]
    return tail[-1][:300] if tail else f"exit {code}"


def install_sysbox(host: Host, deb: Path, digest: str = "", staged: str = "",
                   timeout: int = tm.APT_BASE) -> None:
    """``apt-get install`` the bundled .deb (so its dependencies, fuse3 first, resolve); failures surface.

    ``timeout`` comes from :func:`ops.update.timeouts.apt_budget`: the package scripts restart Sysbox.
    """
    remote = staged or stage_sysbox(host, deb, digest)
    try:
        host.sh(f"{APT_INSTALL} {shlex.quote(remote)}",
                what=f"apt-get install {deb.name}", timeout=timeout)
    except OpsError as exc:
        raise type(exc)(exc.message, "check the host's apt sources and run `apt-get update` there "
                       "(the package needs fuse3 and its other dependencies from them), then rerun") from None


def wait_engine(docker_host: str, conf: CaiConfig, timeout: float = 90, unit: str = ENGINE_UNIT) -> None:
    """Wait until the engine answers a ping (through a new connection each try)."""
    from ops.engine import Engine

    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            Engine.connect(docker_host, conf.label, timeout=10).close()
            return
        except EngineError as exc:
            last = exc.message
        if time.monotonic() > deadline:
            raise EngineError(f"the engine did not answer a ping within {timeout:.0f}s after the restart ({last})",
                              f"see `journalctl -u {unit}`; then inv update --resume")
        time.sleep(0.1)


def budget(host: Host, conf: CaiConfig, engine_unit: str = ENGINE_UNIT) -> int:
    """Seconds a restart of the engine or Sysbox may take on this host (see ``ops.update.timeouts``)."""
    _code, out, _err = host.probe(tm.show_command((engine_unit, GUARD_UNIT)))
    return tm.restart_budget(conf, tm.parse_show(out), engine_unit)


def settle(host: Host, unit: str, timeout: float) -> str:
    """Wait until systemd has no job running for ``unit`` (a start or stop still in progress, e.g. after
    a command that ran it was cut); return its ActiveState. Recovery acts only on a settled unit."""
    deadline = time.monotonic() + timeout
    delay = 0.5
    while True:
        _code, out, _err = host.probe(f"systemctl show -p Job -p ActiveState {unit}")
        values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        if not values.get("Job", "").strip():
            return values.get("ActiveState", "unknown").strip() or "unknown"
        if time.monotonic() + delay > deadline:
            raise OpsError(f"a systemd job for {unit} is still running after {timeout:.0f}s "
                           f"({values.get('ActiveState', '?')}); the update did not touch it",
                           f"wait for it (`systemctl list-jobs`), see `journalctl -u {unit}`, "
                           "then run inv update --resume")
        time.sleep(delay)
        delay = min(delay * 1.5, 5.0)


def restart_unit(host: Host, unit: str, timeout: int) -> None:
    """``systemctl restart`` a unit within ``timeout`` (a restart budget) and fail with its status when it
    does not come up; a restart cut by the timeout raises CutError (its job may still run)."""
    # a start-limit-hit must not block it (one command: the containers may be down meanwhile)
    code, _out, err = host.run(f"systemctl reset-failed {unit} 2>/dev/null; systemctl restart {unit}",
                               what=f"systemctl restart {unit}", timeout=timeout)
    if code != 0:
        raise OpsError(f"{unit} did not (re)start: {err.strip().splitlines()[-1][:200] if err.strip() else code}",
                       f"see `systemctl status {unit}` and `journalctl -u {unit}`")


def start_unit_if_loaded(host: Host, unit: str, timeout: int = 600) -> None:
    """Start a unit when its file exists (Sysbox may not be installed yet)."""
    code, out, _e = host.probe(f"systemctl show -p LoadState --value {unit}")
    if out.strip() == "loaded":
        host.probe(f"systemctl reset-failed {unit} 2>/dev/null")
        host.sh(f"systemctl start {unit}", what=f"systemctl start {unit}", timeout=timeout)


def stop_containers(docker_host: str, conf: CaiConfig, names: list[str], emit: Emit, progress: bool) -> None:
    """Stop managed containers in parallel (each with the stop timeout); fail if any still runs."""
    from ops.engine import ActionResult, Engine

    engine = Engine.connect(docker_host, conf.label)
    done = [0]

    def on_done(r: ActionResult) -> None:
        done[0] += 1
        if progress:
            emit(f"  {'stopped' if r.ok else 'FAILED to stop'} {r.name} ({done[0]}/{len(names)})"
                 + (f": {r.detail}" if r.detail else ""))

    try:
        results = engine.stop_all(names, conf.stop_timeout, on_done)
        still = {c.name for c in engine.running_managed()} & set(names)
    finally:
        engine.close()
    failed = [r.name for r in results if not r.ok] + sorted(still - {r.name for r in results if not r.ok})
    if failed:
        raise OpsError(f"could not stop {', '.join(failed)}", "check them with docker ps; nothing was upgraded")


def start_containers(docker_host: str, conf: CaiConfig, names: list[str]) -> list[str]:
    """Start the named containers that are not running; return the names that could not be started."""
    from ops.engine import Engine

    engine = Engine.connect(docker_host, conf.label)
    try:
        existing = {c.name: c for c in engine.managed()}
        todo = [n for n in names if n in existing and not existing[n].running]
        results = engine.start_all(todo)
        running = {c.name for c in engine.running_managed()}
    finally:
        engine.close()
    bad = [r.name for r in results if not r.ok]
    missing = [n for n in names if n not in existing]
    return sorted(set(bad) | {n for n in names if n in existing and n not in running} | set(missing))


def interrupted_message(j: jr.Journal, where: str) -> OpsError:
    """The refusal of a plain update while a journal of an interrupted one exists."""
    names = ", ".join(j.containers)
    what = (f"containers {names} were stopped by an interrupted update on {where}" if j.containers
            else f"an interrupted update left its journal on {where}")
    return OpsError(f"{what}: run with --resume",
                    "inv update --resume starts them again (add --stop-containers to finish the update); "
                    "the journal is kept until they run")


# --- the flow -------------------------------------------------------------------------------------------

class Session:
    """One update run on one resolved target."""

    def __init__(self, resolved: Any, conf: CaiConfig, opts: Options, emit: Emit,
                 confirm: Callable[[str], bool] | None = None, warn: Emit | None = None) -> None:
        self.resolved = resolved
        self.conf = conf
        self.opts = opts
        self.emit = emit
        self.warn = warn or emit
        self.confirm = confirm
        self._stack = contextlib.ExitStack()
        self._docker_host: str | None = None
        self._host: Host | None = None
        self._reader: Host | None = None
        self._budget: int | None = None
        self.lock: lk.HostLock | None = None
        self.layout: Layout | None = None  # read by read_layout(); None: nothing installed yet (containai)

    def close(self) -> None:
        """Release the engine forward, the staging directory and the lock."""
        if self._host is not None:
            self._host.cleanup()
        self._stack.close()

    @property
    def host(self) -> Host:
        """Root access on the target (checked once, on first use)."""
        if self._host is None:
            self._host = Host.open(self.resolved.ctx)
        return self._host

    @property
    def reader(self) -> Host:
        """How the managed files are read: as root like they are written (the login user only on a dry
        run without root access, where an unreadable file is then an error, never "missing")."""
        if self._reader is None:
            try:
                self._reader = self.host
            except OpsError:
                if not self.opts.dry_run:
                    raise
                self._reader = Host(self.resolved.ctx, "", privileged=False)
        return self._reader

    @property
    def docker_host(self) -> str:
        """The engine's docker host URL (an SSH-forwarded socket for a remote target), opened lazily."""
        if self._docker_host is None:
            from ops.targets import engine_host

            self._docker_host = self._stack.enter_context(engine_host(self.resolved.target, self.conf))
        return self._docker_host

    @property
    def engine_unit(self) -> str:
        """The unit of the engine that serves the managed containers (of the host's layout)."""
        return self.layout.engine_unit if self.layout is not None else ENGINE_UNIT

    @property
    def vm(self) -> bool:
        """The lima-vm layout: Sysbox and the stop hook only, never the dockerd bundle or containai-docker."""
        return self.layout is not None and self.layout.name == LIMA_VM

    def read_layout(self) -> Layout | None:
        """Read the host layout on the target (as root, like the files the update replaces; see
        ``ops.layout.update_layout``: refusals change nothing). On lima-vm the engine socket and data
        root become the VM's docker.service's."""
        from ops.layout import LayoutError, conf_for, parse_probe, probe_command, update_layout

        _code, out, err = self.reader.probe(probe_command(self.conf.label))
        if "load:" not in out:
            raise LayoutError(f"{self.resolved.name}: the layout probe failed ({err.strip()[:200] or _code})",
                              "check that the host is a POSIX host with a shell")
        self.layout = update_layout(self.resolved.ctx, self.conf, self.resolved.name, parse_probe(out))
        if self.vm and self.layout is not None:
            if self._docker_host is not None:
                raise OpsError("the engine was reached before the host layout was read", "this is a bug")
            self.conf = conf_for(self.conf, self.layout)
        return self.layout

    def take_lock(self) -> None:
        """Hold the target's update lock until the session closes (see ``ops.update.lock``)."""
        if self.lock is None:
            self.lock = self._stack.enter_context(
                lk.held(self.resolved.target, self.conf, self.host.sudo, self.resolved.name))

    def restart_budget(self) -> int:
        """The restart budget of this host (read from its units once they are installed)."""
        if self._budget is None:
            self._budget = budget(self.host, self.conf, self.engine_unit)
        return self._budget

    def facts(self) -> UpdateFacts:
        """Host facts plus, when a restart is needed, the running managed containers."""
        facts = gather(self.resolved, self.conf, self.reader, self.layout)
        if pl.restart_reasons(facts):
            allow_down = self.opts.stop_containers or self.opts.force
            found = running_containers(self.docker_host, self.conf, facts.host, self.resolved.name,
                                       allow_down=allow_down, engine_unit=self.engine_unit)
            if not found and allow_down and facts.host.engine_state in DOWN_STATES:
                self.emit(f"  note: {self.engine_unit} is {facts.host.engine_state}: no container runs; "
                          "the update installs and starts it")
            return replace(facts, running=found)
        return facts

    def check_journal(self) -> None:
        """Refuse a plain update while the journal of an interrupted one exists (never overwrite it)."""
        j = jr.read(self.reader, self.conf)
        if j is not None:
            raise interrupted_message(j, self.resolved.name)

    # -- resume --
    def resume(self) -> dict[str, Any]:
        """Start what the journal says was running; clear it when they all run."""
        j = jr.read(self.host, self.conf)
        if j is None:
            self.emit("no interrupted update to resume (no journal)")
            return {"journal": None}
        self.emit(f"resuming: {len(j.containers)} container(s) were running before an interrupted update"
                  + (f" (done: {', '.join(j.done)})" if j.done else ""))
        restart = self.restart_budget()
        for unit in ("sysbox.service", self.engine_unit):
            settle(self.host, unit, restart)
        start_unit_if_loaded(self.host, "sysbox.service", restart)
        start_unit_if_loaded(self.host, self.engine_unit, restart)
        wait_engine(self.docker_host, self.conf, unit=self.engine_unit)
        bad = start_containers(self.docker_host, self.conf, list(j.containers))
        if bad:
            kept = jr.path(self.conf)
            raise OpsError(f"could not start {', '.join(bad)} (kept in the journal {kept})",
                           "see `docker logs`/`journalctl`; rerun inv update --resume after fixing")
        jr.clear(self.host, self.conf)
        self.emit(f"started again: {', '.join(j.containers) or 'none'}")
        return {"journal": jr.dumps(j), "started": list(j.containers)}

    # -- gate --
    def gate(self, p: pl.Plan) -> None:
        """Refuse (exit 2) or ask when running containers would be stopped without --stop-containers;
        ``--force`` proceeds with one warning line naming them and why."""
        if not p.needs_stop or self.opts.stop_containers:
            return
        names = ", ".join(c.name for c in p.stop)
        if self.opts.force:
            why = next((s.reason for s in p.steps if s.action == pl.STOP), "the update restarts the engine")
            self.warn(f"warning: --force: stopping {len(p.stop)} running managed container(s) ({names}) "
                      f"because {why}; they are started again afterwards")
            return
        question = f"Stop {len(p.stop)} running managed container(s) ({names}) and update?"
        if self.opts.interactive and self.confirm is not None:
            if self.confirm(question):
                return
            raise RefusedError("update declined; nothing was changed",
                               "rerun with --stop-containers to stop them and update")
        raise RefusedError(f"{len(p.stop)} managed container(s) are running ({names}) and the update must "
                           "restart the engine; nothing was changed",
                           "rerun with --stop-containers to stop them, update, and start them again")

    # -- apply --
    def apply(self, facts: UpdateFacts, p: pl.Plan) -> dict[str, Any]:
        """Apply the plan's steps in order; the journal first when containers stop, a copy of what is
        replaced before the first change (put back if the new engine does not answer)."""
        host, conf = self.host, self.conf
        names = [c.name for c in p.stop]
        digests = preflight(p)  # a damaged bundle is refused before anything is stopped
        # so is a copy that arrived damaged on the target, or a package apt cannot install there
        staged: dict[str, str] = {}
        for step in p.steps:
            if step.action == pl.DOCKERD:
                tarball = str(step.data["tarball"])
                staged[tarball] = stage(host, Path(tarball), digests[tarball])
            elif step.action == pl.SYSBOX:
                deb = str(step.data["deb"])
                staged[deb] = stage_sysbox(host, Path(deb), digests[deb])
        drifted = {d.path for d in facts.drift}
        files: list[RenderedFile] = [f for f in facts.rendered if f.path in drifted]
        new_version = next((str(s.data["version"]) for s in p.steps if s.action == pl.DOCKERD), None)
        if names or any(s.action in (pl.SYSBOX, pl.RESTART_SYSBOX, pl.RESTART_ENGINE) for s in p.steps):
            self.restart_budget()  # read now: not while the containers are down
        sysbox_before = sysbox_invocation(host) if any(s.action == pl.SYSBOX for s in p.steps) else None
        keep = [f.path for f in files]
        # something the engine runs on is replaced (on lima-vm only the stop hook is ours: nothing to
        # roll back that would make the VM's docker.service start)
        guarded = bool(keep or new_version) and not self.vm
        if self.lock is not None:
            self.lock.check()
        j: jr.Journal | None = None
        if names:
            j = jr.Journal(facts.target, tuple(names), tuple(p.actions()))
            jr.write(host, conf, j)  # BEFORE any container stops
        if guarded:
            try:
                rb.backup(host, conf, keep, new_version)  # BEFORE anything changes
            except OpsError:
                if j is not None:
                    with contextlib.suppress(OpsError):
                        jr.clear(host, conf)
                raise
        state = {"changed": False, "engine_ok": not guarded, "sysbox": False, "touched": False, "stopped": False}
        sysbox_restarted = False
        # While containers are down only what needs them down runs: the drifted files are written and
        # systemd reads them (daemon-reload restarts nothing) before the stop; nothing that runs is
        # restarted before step RESTART_*, and a failure before it puts the files back without a restart.
        early = (pl.UNITS, pl.RELOAD) if names else ()
        ordered = [s for s in p.steps if s.action in early] + [s for s in p.steps if s.action not in early]
        try:
            if new_version:
                # unpacked before the containers stop; the switch after the stop is renames only
                unpack_dockerd(host, conf, staged[str(next(s.data["tarball"] for s in p.steps
                                                           if s.action == pl.DOCKERD))], new_version)
            for step in ordered:
                self.emit(f"- {step.summary}")
                if step.action in (pl.SYSBOX, pl.RESTART_SYSBOX, pl.RESTART_ENGINE):
                    state["touched"] = True  # the running engine or Sysbox may go down from here on
                if step.action == pl.STOP:
                    state["stopped"] = True
                    stop_containers(self.docker_host, conf, names, self.emit, self.opts.progress)
                elif step.action == pl.DOCKERD:
                    state["changed"] = True
                    tarball = str(step.data["tarball"])
                    switch_dockerd(host, conf, step.data["version"])
                elif step.action == pl.SYSBOX:
                    state["sysbox"] = True
                    deb = str(step.data["deb"])
                    install_sysbox(host, Path(deb), digests[deb], staged[deb],
                                   timeout=tm.apt_budget(self.restart_budget()))
                    if sysbox_before is not None:
                        after = sysbox_invocation(host)
                        sysbox_restarted = after[1] == "active" and after[0] != sysbox_before[0]
                elif step.action == pl.UNITS:
                    state["changed"] = True
                    host.write_files([(f.path, f.text, f.mode) for f in files])  # one round trip
                elif step.action == pl.RELOAD:
                    # containai: the engine unit (it Wants= the guard); lima-vm: the guard, into docker.service;
                    # the new units' timeouts count from now on (read in the same command)
                    enable = GUARD_UNIT if self.vm else ENGINE_UNIT
                    out = host.sh(f"systemctl daemon-reload && systemctl enable {enable} >/dev/null && "
                                  + tm.show_command((self.engine_unit, GUARD_UNIT)),
                                  what=f"systemctl daemon-reload and enable {enable}")
                    self._budget = tm.restart_budget(conf, tm.parse_show(out), self.engine_unit)
                elif step.action == pl.RESTART_SYSBOX:
                    if sysbox_restarted:
                        self.emit("  (the package's scripts restarted sysbox.service on the new Sysbox: "
                                  "not restarted twice)")
                    else:
                        restart_unit(host, "sysbox.service", self.restart_budget())
                elif step.action == pl.RESTART_ENGINE:
                    restart_unit(host, self.engine_unit, self.restart_budget())
                    wait_engine(self.docker_host, conf, unit=self.engine_unit)
                    state["engine_ok"] = True
                    # the copy is not needed any more, and the stop hook must run (one command)
                    drop = f"rm -rf {shlex.quote(rb.backup_dir(conf))}; " if guarded else ""
                    host.sh(f"{drop}systemctl start {GUARD_UNIT}", what=f"systemctl start {GUARD_UNIT}")
                elif step.action == pl.START_GUARD:
                    host.sh(f"systemctl start {GUARD_UNIT}", what=f"systemctl start {GUARD_UNIT}")
                elif step.action == pl.START:
                    bad = start_containers(self.docker_host, conf, names)
                    if bad:
                        raise OpsError(f"could not start {', '.join(bad)} after the update",
                                       "see `docker logs NAME`; then inv update --resume")
                if j is not None:
                    j = j.with_done(step.action)
                    jr.write(host, conf, j)
        except OpsError as exc:
            failure = exc
            if new_version:
                discard_unpacked(host, conf, new_version)
            if guarded and not state["engine_ok"]:
                failure = self._rollback(exc, keep, new_version, state["changed"], state["sysbox"],
                                         state["touched"])
            if j is None:
                raise failure from None
            raise self._recover(failure, names, state["stopped"]) from None
        except KeyboardInterrupt:
            if j is not None:
                self.warn(f"interrupted: the stopped containers are recorded in {jr.path(conf)}; "
                          "run inv update --resume")
            raise
        return {"stopped": names}

    def _rollback(self, exc: OpsError, files: list[str], new_version: str | None, changed: bool,
                  sysbox: bool, touched: bool = True) -> OpsError:
        """The new install did not come up: put the previous files back and start the previous engine
        (when the engine was never touched, it still runs the previous install: the files go back and
        systemd reads them, nothing is restarted)."""
        host, conf = self.host, self.conf
        if not changed:
            with contextlib.suppress(OpsError):
                rb.drop(host, conf)
            return exc
        if not touched:
            self.emit(f"the update failed ({exc.message}); putting the previous files back (the engine was not "
                      "restarted)")
            try:
                rb.restore(host, conf, files, new_version)
            except OpsError as again:
                return type(exc)(f"{exc.message}; putting the previous files back failed too ({again.message}; "
                                 f"they are kept in {rb.backup_dir(conf)})",
                                 "put them back by hand, then run inv update --resume", exc.exit_code)
            with contextlib.suppress(OpsError):
                rb.drop(host, conf)
            return type(exc)(f"{exc.message}; the previous dockerd bundle, units and daemon.json were put back "
                             "and the engine was not restarted", exc.hint, exc.exit_code)
        self.emit(f"the update failed ({exc.message}); putting the previous dockerd bundle, units and "
                  "daemon.json back")
        restart = self.restart_budget()
        try:
            settle(host, ENGINE_UNIT, restart)  # never race a start or stop still running
            # the new engine unit pulled in the stop hook: stop it while its files are still the new ones
            host.probe(f"systemctl stop {GUARD_UNIT}", timeout=restart)
            rb.restore(host, conf, files, new_version)
            self._budget = None
            restart_unit(host, ENGINE_UNIT, self.restart_budget())
            wait_engine(self.docker_host, conf)
            start_unit_if_loaded(host, GUARD_UNIT)
        except OpsError as again:
            return type(exc)(f"{exc.message}; the rollback failed too ({again.message}; the previous files "
                             f"are kept in {rb.backup_dir(conf)})",
                             f"see `journalctl -u {ENGINE_UNIT}`; fix the engine, then run inv update --resume",
                             exc.exit_code)
        with contextlib.suppress(OpsError):
            rb.drop(host, conf)
        kept = " (the new Sysbox stays installed)" if sysbox else ""
        return type(exc)(f"{exc.message}; rolled back to the previous dockerd bundle, units and daemon.json"
                         f"{kept}, and the previous engine answers",
                         exc.hint or f"see `journalctl -u {ENGINE_UNIT}`, fix the bundle, then rerun",
                         exc.exit_code)

    def _recover(self, exc: OpsError, names: list[str], stopped: bool = True) -> OpsError:
        """After a failed step: bring the engine and the stopped containers back if possible."""
        if not stopped:  # failed before any container was stopped: they still run
            with contextlib.suppress(OpsError):
                jr.clear(self.host, self.conf)
            return type(exc)(f"{exc.message}; no container was stopped", exc.hint, exc.exit_code)
        self.emit(f"update failed ({exc.message}); starting the stopped containers again")
        try:
            restart = self.restart_budget()
            for unit in ("sysbox.service", self.engine_unit):
                settle(self.host, unit, restart)  # never race a start or stop still running
            start_unit_if_loaded(self.host, "sysbox.service", restart)
            start_unit_if_loaded(self.host, self.engine_unit, restart)
            wait_engine(self.docker_host, self.conf, timeout=60, unit=self.engine_unit)
            bad = start_containers(self.docker_host, self.conf, names)
        except OpsError as again:
            return type(exc)(f"{exc.message}; the stopped containers could not be started ({again.message}) "
                             f"and are recorded in {jr.path(self.conf)}",
                             f"{exc.hint or 'fix the cause'}; then run inv update --resume", exc.exit_code)
        if bad:
            return type(exc)(f"{exc.message}; {', '.join(bad)} could not be started and are recorded in "
                             f"{jr.path(self.conf)}", "fix the cause, then run inv update --resume", exc.exit_code)
        with contextlib.suppress(OpsError):
            jr.clear(self.host, self.conf)
        return type(exc)(f"{exc.message}; the {len(names)} stopped container(s) were started again",
                         exc.hint, exc.exit_code)


def verify_converged(before: pl.Plan, facts: UpdateFacts, journal_names: list[str]) -> list[str]:
    """Pure: what is still wrong after applying (empty when the host reached the planned state)."""
    problems = []
    again = pl.plan(facts)
    left = [s.summary for s in again.steps if s.action not in (pl.STOP, pl.START, pl.START_GUARD)]
    if left:
        problems.append("still needed: " + "; ".join(left))
    if facts.host.systemd and facts.host.engine_state != "active":
        problems.append(f"{facts.engine_unit} is {facts.host.engine_state}")
    if facts.running is not None:
        running = {c.name for c in facts.running}
        down = [n for n in journal_names if n not in running]
        if down:
            problems.append("not running again: " + ", ".join(down))
    return problems


@contextlib.contextmanager
def session(base_ctx: Any, conf: CaiConfig, target_text: str, opts: Options, emit: Emit,
            confirm: Callable[[str], bool] | None = None, warn: Emit | None = None) -> Iterator[Session]:
    """Resolve the target and open a Session on it."""
    from ops.targets import resolve

    resolved = resolve(target_text, conf, base_ctx)
    s = Session(resolved, conf, opts, emit, confirm, warn)
    try:
        yield s
    finally:
        s.close()


def run_update(base_ctx: Any, conf: CaiConfig, target_text: str, opts: Options, emit: Emit,
               confirm: Callable[[str], bool] | None = None, warn: Emit | None = None) -> dict[str, Any]:
    """The whole update of one target; returns the report (raises OpsError / RefusedError).

    A real run (not ``--dry-run``) holds the target's update lock from before it reads anything until
    it ends, ``--resume`` included; a journal of an interrupted update makes a plain run refuse.
    """
    report: dict[str, Any] = {"schema": 1, "target": target_text, "dry_run": opts.dry_run}
    with session(base_ctx, conf, target_text, opts, emit, confirm, warn) as s:
        report["target"] = s.resolved.name
        report["platform"] = s.resolved.platform
        if not opts.dry_run:
            s.host  # noqa: B018 - root access is checked first: a clear "not root" before anything else
            s.take_lock()
        layout = s.read_layout()  # refusals (both engines, unreadable daemon.json, ...) change nothing
        report["layout"] = layout.name if layout is not None else None
        if opts.resume:
            if opts.dry_run:
                j = jr.read(s.reader, conf)
                emit("would start again: " + (", ".join(j.containers) if j else "nothing (no journal)"))
            else:
                report["resume"] = s.resume()
        else:
            s.check_journal()
        facts = s.facts()
        p = pl.plan(facts)
        report["before"] = facts.summary()
        report["plan"] = p.as_dict()
        for note in p.notes:
            emit(f"  note: {note}")
        if p.blockers:
            for message, hint in p.blockers[1:]:
                emit(f"blocked: {message}: {hint}")
            message, hint = p.blockers[0]
            report["result"] = "blocked"
            raise OpsError(message, hint)
        if p.nothing_to_do:
            engine = (f"dockerd bundle {facts.dockerd_installed}" if facts.uses_bundle
                      else f"the VM's {facts.engine_unit}")
            emit(f"{s.resolved.name}: up to date (Sysbox {facts.sysbox_installed}, {engine}, units current); "
                 "nothing to do")
            report["result"] = "up-to-date"
            return report
        emit(f"{s.resolved.name}: update plan ({len(p.steps)} steps)")
        for line in pl.step_lines(p, opts.dry_run):
            emit(line)
        if p.stop:
            emit(f"  running managed containers that {'would' if opts.dry_run else 'will'} be stopped "
                 "and started again:")
            for c in p.stop:
                emit(f"    {c.name}  {c.image}  {c.state}")
        preflight(p)  # also on a dry run: a damaged bundle is reported now, not half-way
        if opts.dry_run:
            report["result"] = "dry-run"
            emit("dry run: nothing was changed")
            return report
        try:
            s.gate(p)
        except RefusedError:
            report["result"] = "refused"
            raise
        applied = s.apply(facts, p)
        after = s.facts()
        if after.running is None:
            after = replace(after, running=running_containers(s.docker_host, s.conf, after.host, s.resolved.name,
                                                              engine_unit=s.engine_unit))
        problems = verify_converged(p, after, applied["stopped"])
        report["after"] = after.summary()
        if problems:
            report["result"] = "not-converged"
            raise OpsError("the update did not converge: " + "; ".join(problems),
                           "see the messages above; inv update --resume restarts what the journal lists")
        if applied["stopped"]:
            jr.clear(s.host, s.conf)
        report["result"] = "updated"
        report["restarted"] = applied["stopped"]
        engine = (f"dockerd bundle {after.dockerd_installed}" if after.uses_bundle
                  else f"the VM's {after.engine_unit}")
        emit(f"{s.resolved.name}: updated (Sysbox {after.sysbox_installed}, {engine}); "
             + (f"{len(applied['stopped'])} container(s) running again"
                                                if applied["stopped"] else "no container was stopped"))
        return report
