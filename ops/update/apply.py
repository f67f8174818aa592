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
from ops.units import ENGINE_UNIT, GUARD_UNIT, RenderedFile
from ops.update import journal as jr
from ops.update import plan as pl
from ops.update.facts import UpdateFacts, gather, running_containers
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


def install_dockerd(host: Host, conf: CaiConfig, tarball: Path, version: str, digest: str = "",
                    staged: str = "") -> None:
    """Unpack the bundle to ``<opt_dir>/docker/<version>/``, switch the links atomically, write VERSION."""
    remote = staged or stage(host, tarball, digest)
    q = shlex.quote
    opt = conf.opt_dir.rstrip("/")
    script = f"""set -e
opt={q(opt)}; ver={q(version)}; tgz={q(remote)}
dest="$opt/docker/$ver"; tmp="$opt/docker/.$ver.cai-new"
rm -rf "$tmp"; mkdir -p "$tmp" "$opt/bin"
tar -xzf "$tgz" -C "$tmp" --no-same-owner
if [ ! -x "$tmp/docker/dockerd" ]; then echo "the tarball has no docker/dockerd" >&2; rm -rf "$tmp"; exit 3; fi
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
    code, out, err = host.probe(f"{APT_INSTALL} -s {q(remote)}")  # the real run's options, simulated
    if code != 0:
        raise OpsError(f"apt-get install {deb.name} would fail on {host.name} ({apt_reason(code, out, err)}); "
                       "nothing was changed",
                       "run `apt-get update` there and check its apt sources (the package needs fuse3 and "
                       "its other dependencies from them), then rerun")
    return remote


def apt_reason(code: int, out: str, err: str) -> str:
    """Pure: the most telling line of a failed apt-get run (an unmet dependency before apt's summary)."""
    unmet = [line.strip() for line in out.splitlines() if "Depends:" in line or "Conflicts:" in line]
    if unmet:
        return unmet[0][:300]
    tail = [line.strip() for line in (err or out).strip().splitlines() if line.strip()]
    return tail[-1][:300] if tail else f"exit {code}"


def install_sysbox(host: Host, deb: Path, digest: str = "", staged: str = "") -> None:
    """``apt-get install`` the bundled .deb (so its dependencies, fuse3 first, resolve); failures surface."""
    remote = staged or stage_sysbox(host, deb, digest)
    try:
        host.sh(f"{APT_INSTALL} {shlex.quote(remote)}",
                what=f"apt-get install {deb.name}", timeout=900)
    except OpsError as exc:
        raise OpsError(exc.message, "check the host's apt sources and run `apt-get update` there "
                       "(the package needs fuse3 and its other dependencies from them), then rerun") from None


def wait_engine(docker_host: str, conf: CaiConfig, timeout: float = 90) -> None:
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
                              f"see `journalctl -u {ENGINE_UNIT}`; then inv update --resume")
        time.sleep(0.5)


def restart_unit(host: Host, unit: str) -> None:
    """``systemctl restart`` a unit and fail with its status when it does not come up."""
    host.probe(f"systemctl reset-failed {unit} 2>/dev/null")  # a start-limit-hit must not block it
    code, _out, err = host.probe(f"systemctl restart {unit}")
    if code != 0:
        raise OpsError(f"{unit} did not (re)start: {err.strip().splitlines()[-1][:200] if err.strip() else code}",
                       f"see `systemctl status {unit}` and `journalctl -u {unit}`")


def start_unit_if_loaded(host: Host, unit: str) -> None:
    """Start a unit when its file exists (Sysbox may not be installed yet)."""
    code, out, _e = host.probe(f"systemctl show -p LoadState --value {unit}")
    if out.strip() == "loaded":
        host.probe(f"systemctl reset-failed {unit} 2>/dev/null")
        host.sh(f"systemctl start {unit}", what=f"systemctl start {unit}")


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


# --- the flow -------------------------------------------------------------------------------------------

class Session:
    """One update run on one resolved target."""

    def __init__(self, resolved: Any, conf: CaiConfig, opts: Options, emit: Emit,
                 confirm: Callable[[str], bool] | None = None) -> None:
        self.resolved = resolved
        self.conf = conf
        self.opts = opts
        self.emit = emit
        self.confirm = confirm
        self._stack = contextlib.ExitStack()
        self._docker_host: str | None = None
        self._host: Host | None = None

    def close(self) -> None:
        """Release the engine forward and the staging directory."""
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
    def docker_host(self) -> str:
        """The engine's docker host URL (an SSH-forwarded socket for a remote target), opened lazily."""
        if self._docker_host is None:
            from ops.targets import engine_host

            self._docker_host = self._stack.enter_context(engine_host(self.resolved.target, self.conf))
        return self._docker_host

    def facts(self) -> UpdateFacts:
        """Host facts plus, when a restart is needed, the running managed containers."""
        facts = gather(self.resolved, self.conf)
        if pl.restart_reasons(facts):
            found = running_containers(self.docker_host, self.conf, facts.host, self.resolved.name)
            return replace(facts, running=found)
        return facts

    # -- resume --
    def resume(self) -> dict[str, Any]:
        """Start what the journal says was running; clear it when they all run."""
        j = jr.read(self.host, self.conf)
        if j is None:
            self.emit("no interrupted update to resume (no journal)")
            return {"journal": None}
        self.emit(f"resuming: {len(j.containers)} container(s) were running before an interrupted update"
                  + (f" (done: {', '.join(j.done)})" if j.done else ""))
        start_unit_if_loaded(self.host, "sysbox.service")
        start_unit_if_loaded(self.host, ENGINE_UNIT)
        wait_engine(self.docker_host, self.conf)
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
        """Refuse (exit 2) or ask when running containers would be stopped without --stop-containers."""
        if not p.needs_stop or self.opts.stop_containers:
            return
        question = f"Stop {len(p.stop)} running managed container(s) and update?"
        if self.opts.force:
            return
        if self.opts.interactive and self.confirm is not None:
            if self.confirm(question):
                return
            raise RefusedError("update declined; nothing was changed",
                               "rerun with --stop-containers to stop them and update")
        names = ", ".join(c.name for c in p.stop)
        raise RefusedError(f"{len(p.stop)} managed container(s) are running ({names}) and the update must "
                           "restart the engine; nothing was changed",
                           "rerun with --stop-containers to stop them, update, and start them again")

    # -- apply --
    def apply(self, facts: UpdateFacts, p: pl.Plan) -> dict[str, Any]:
        """Apply the plan's steps in order; the journal first when containers stop."""
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
        j: jr.Journal | None = None
        if names:
            j = jr.Journal(facts.target, tuple(names), tuple(p.actions()))
            jr.write(host, conf, j)  # BEFORE any container stops
        drifted = {d.path for d in facts.drift}
        files: list[RenderedFile] = [f for f in facts.rendered if f.path in drifted]
        try:
            for step in p.steps:
                self.emit(f"- {step.summary}")
                if step.action == pl.STOP:
                    stop_containers(self.docker_host, conf, names, self.emit, self.opts.progress)
                elif step.action == pl.DOCKERD:
                    tarball = str(step.data["tarball"])
                    install_dockerd(host, conf, Path(tarball), step.data["version"], digests[tarball],
                                    staged[tarball])
                elif step.action == pl.SYSBOX:
                    deb = str(step.data["deb"])
                    install_sysbox(host, Path(deb), digests[deb], staged[deb])
                elif step.action == pl.UNITS:
                    for f in files:
                        host.write_text(f.path, f.text, f.mode)
                elif step.action == pl.RELOAD:
                    host.sh("systemctl daemon-reload", what="systemctl daemon-reload")
                    host.sh(f"systemctl enable {ENGINE_UNIT}", what=f"systemctl enable {ENGINE_UNIT}")
                elif step.action == pl.RESTART_SYSBOX:
                    restart_unit(host, "sysbox.service")
                elif step.action == pl.RESTART_ENGINE:
                    restart_unit(host, ENGINE_UNIT)
                    wait_engine(self.docker_host, conf)
                    host.sh(f"systemctl start {GUARD_UNIT}", what=f"systemctl start {GUARD_UNIT}")
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
            if j is None:
                raise
            raise self._recover(exc, names) from None
        except KeyboardInterrupt:
            if j is not None:
                self.emit(f"interrupted: the stopped containers are recorded in {jr.path(conf)}; "
                          "run inv update --resume")
            raise
        return {"stopped": names}

    def _recover(self, exc: OpsError, names: list[str]) -> OpsError:
        """After a failed step: bring the engine and the stopped containers back if possible."""
        self.emit(f"update failed ({exc.message}); starting the stopped containers again")
        try:
            start_unit_if_loaded(self.host, "sysbox.service")
            start_unit_if_loaded(self.host, ENGINE_UNIT)
            wait_engine(self.docker_host, self.conf, timeout=60)
            bad = start_containers(self.docker_host, self.conf, names)
        except OpsError as again:
            return OpsError(f"{exc.message}; the stopped containers could not be started ({again.message}) "
                            f"and are recorded in {jr.path(self.conf)}",
                            f"{exc.hint or 'fix the cause'}; then run inv update --resume", exc.exit_code)
        if bad:
            return OpsError(f"{exc.message}; {', '.join(bad)} could not be started and are recorded in "
                            f"{jr.path(self.conf)}", "fix the cause, then run inv update --resume", exc.exit_code)
        with contextlib.suppress(OpsError):
            jr.clear(self.host, self.conf)
        return OpsError(f"{exc.message}; the {len(names)} stopped container(s) were started again",
                        exc.hint, exc.exit_code)


def verify_converged(before: pl.Plan, facts: UpdateFacts, journal_names: list[str]) -> list[str]:
    """Pure: what is still wrong after applying (empty when the host reached the planned state)."""
    problems = []
    again = pl.plan(facts)
    left = [s.summary for s in again.steps if s.action not in (pl.STOP, pl.START, pl.START_GUARD)]
    if left:
        problems.append("still needed: " + "; ".join(left))
    if facts.host.systemd and facts.host.engine_state != "active":
        problems.append(f"{ENGINE_UNIT} is {facts.host.engine_state}")
    if facts.running is not None:
        running = {c.name for c in facts.running}
        down = [n for n in journal_names if n not in running]
        if down:
            problems.append("not running again: " + ", ".join(down))
    return problems


@contextlib.contextmanager
def session(base_ctx: Any, conf: CaiConfig, target_text: str, opts: Options, emit: Emit,
            confirm: Callable[[str], bool] | None = None) -> Iterator[Session]:
    """Resolve the target and open a Session on it."""
    from ops.targets import resolve

    resolved = resolve(target_text, conf, base_ctx)
    s = Session(resolved, conf, opts, emit, confirm)
    try:
        yield s
    finally:
        s.close()


def run_update(base_ctx: Any, conf: CaiConfig, target_text: str, opts: Options, emit: Emit,
               confirm: Callable[[str], bool] | None = None) -> dict[str, Any]:
    """The whole update of one target; returns the report (raises OpsError / RefusedError)."""
    report: dict[str, Any] = {"schema": 1, "target": target_text, "dry_run": opts.dry_run}
    with session(base_ctx, conf, target_text, opts, emit, confirm) as s:
        report["target"] = s.resolved.name
        report["platform"] = s.resolved.platform
        if not opts.dry_run:
            s.host  # noqa: B018 - root access is checked first: a clear "not root" before anything else
        if opts.resume:
            if opts.dry_run:
                j = jr.read(s.host, conf)
                emit("would start again: " + (", ".join(j.containers) if j else "nothing (no journal)"))
            else:
                report["resume"] = s.resume()
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
            emit(f"{s.resolved.name}: up to date (Sysbox {facts.sysbox_installed}, dockerd bundle "
                 f"{facts.dockerd_installed}, units current); nothing to do")
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
            after = replace(after, running=running_containers(s.docker_host, conf, after.host, s.resolved.name))
        problems = verify_converged(p, after, applied["stopped"])
        report["after"] = after.summary()
        if problems:
            report["result"] = "not-converged"
            raise OpsError("the update did not converge: " + "; ".join(problems),
                           "see the messages above; inv update --resume restarts what the journal lists")
        if applied["stopped"]:
            jr.clear(s.host, conf)
        report["result"] = "updated"
        report["restarted"] = applied["stopped"]
        emit(f"{s.resolved.name}: updated (Sysbox {after.sysbox_installed}, dockerd bundle "
             f"{after.dockerd_installed}); " + (f"{len(applied['stopped'])} container(s) running again"
                                                if applied["stopped"] else "no container was stopped"))
        return report
