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
from typing import TYPE_CHECKING, Any

from ops.config import CaiConfig
from ops.errors import EngineError, OpsError, RefusedError
from ops.layout import LIMA_VM, Layout
from ops.units import ENGINE_UNIT, GUARD_UNIT
from ops.update import journal as jr
from ops.update import lock as lk
from ops.update import plan as pl
from ops.update import rollback as rb
from ops.update import steps as st
from ops.update import timeouts as tm
from ops.update.facts import DOWN_STATES, UpdateFacts, gather, running_containers
from ops.update.hostio import Host

if TYPE_CHECKING:
    from ops.engine import Engine

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
    commands: bool = False  # with dry_run: print every command the update would run, in order


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


def preflight(p: pl.Plan) -> dict[str, str]:
    """Check the checksums of every bundled file the plan installs; path -> sha256."""
    digests = {}
    for step in p.steps:
        for key in ("tarball", "deb"):
            if key in step.data and step.data[key]:
                digests[str(step.data[key])] = checked_digest(Path(step.data[key]))
    return digests


# --- steps run on their own (the same commands ``Session.apply`` runs; see ops.update.steps) -----------

def _runner(host: Host, conf: CaiConfig) -> st.Runner:
    env = st.Env(conf, host=host)
    env.staging = host.staging()
    return st.Runner(host, env)


def stage(host: Host, local: Path, digest: str = "") -> str:
    """Copy a bundled file to the target's staging directory and check its sha256 there."""
    runner = _runner(host, CaiConfig.from_mapping({}))
    runner.run_op(st.Stage(str(local), digest or checked_digest(local)))
    return f"{runner.env.staging}/{local.name}"


unpacked_dir = st.unpacked_dir


def unpack_dockerd(host: Host, conf: CaiConfig, staged: str, version: str) -> None:
    """Unpack the staged bundle next to ``<opt_dir>/docker/<version>/`` (under a temporary name) and
    check it holds dockerd. Nothing the engine runs on changes, so this happens before the
    containers stop; :func:`switch_dockerd` then only renames."""
    host.sh(st.unpack_script(conf, staged, version), what=f"unpacking the dockerd bundle {version}")


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
    host.sh(st.switch_script(conf, version), what=f"installing the dockerd bundle {version}")


APT_INSTALL = st.APT_INSTALL
apt_reason = st.apt_reason


def wait_engine(docker_host: str, conf: CaiConfig, timeout: float = 90, unit: str = ENGINE_UNIT) -> None:
    """Wait until the engine answers a ping (through a new connection each try)."""
    answering(docker_host, conf, timeout, unit).close()


def answering(docker_host: str, conf: CaiConfig, timeout: float = 90, unit: str = ENGINE_UNIT) -> Engine:
    """Wait until the engine answers (``GET /version`` through a new connection each try, 50 ms apart)
    and return that connection, so that what follows (the containers' start) sends its first request
    at once."""
    from ops.engine import Engine

    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:
            # the start's requests go through this connection: the SDK's usual 30 s per request (a
            # refused or missing socket still fails at once, before any request)
            return Engine.connect(docker_host, conf.label)
        except EngineError as exc:
            last = exc.message
        if time.monotonic() > deadline:
            raise EngineError(f"the engine did not answer a ping within {timeout:.0f}s after the restart ({last})",
                              f"see `journalctl -u {unit}`; then inv update --resume")
        time.sleep(0.05)


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
    code, out, err = host.run(st.restart_command(unit), what=f"systemctl restart {unit}", timeout=timeout)
    st.restarted(unit)(st.Result(code, out, err, host.name))


def start_unit_if_loaded(host: Host, unit: str, timeout: int = 600) -> None:
    """Start a unit when its file exists (Sysbox may not be installed yet)."""
    code, out, _e = host.probe(f"systemctl show -p LoadState --value {unit}")
    if out.strip() == "loaded":
        host.probe(f"systemctl reset-failed {unit} 2>/dev/null")
        host.sh(f"systemctl start {unit}", what=f"systemctl start {unit}", timeout=timeout)


def stop_containers(docker_host: str, conf: CaiConfig, names: list[str], emit: Emit, progress: bool) -> list[str]:
    """Stop managed containers in parallel (each with the stop timeout); fail if any still runs; return
    their names in the order they were stopped."""
    from ops.engine import ActionResult, Engine

    engine = Engine.connect(docker_host, conf.label)
    done = [0]
    order: list[str] = []

    def on_done(r: ActionResult) -> None:
        done[0] += 1
        order.append(r.name)
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
    return order


def start_containers(docker_host: str, conf: CaiConfig, names: list[str], engine: Engine | None = None) -> list[str]:
    """Start the named containers; return the names that could not be started (or do not run after).

    One ``POST /containers/NAME/start`` per container, in the order given (a container that already runs
    answers 304, a no-op; one that is gone answers 404): nothing is listed or inspected before the
    starts, the one listing comes after them. ``engine``: a connection to use (and leave open).
    """
    from ops.engine import Engine

    own = engine is None
    if engine is None:
        engine = Engine.connect(docker_host, conf.label)
    try:
        results = engine.start_all(names)
        running = {c.name for c in engine.running_managed()}
    finally:
        if own:
            engine.close()
    bad = [r.name for r in results if not r.ok]
    return sorted(set(bad) | {n for n in names if n not in running})


def interrupted_message(j: jr.Journal, where: str) -> OpsError:
    """The refusal of a plain update while a journal of an interrupted one exists."""
    names = ", ".join(j.containers)
    what = (f"containers {names} were stopped by an interrupted update on {where}" if j.containers
            else f"an interrupted update left its journal on {where}")
    return OpsError(f"{what}: run with --resume",
                    "inv update --resume starts them again (add --stop-containers to finish the update); "
                    "the journal is kept until they run")


# --- the flow -------------------------------------------------------------------------------------------

class _EngineCalls:
    """The engine calls of a session's steps, on its target's engine (``ops.update.steps.EngineCalls``).

    The stop remembers the order in which the containers exited, and the start starts them in that
    order; the wait for the restarted engine keeps its connection for the start that follows it."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.exited: list[str] = []
        self.engine: Engine | None = None

    def stop(self, names: list[str]) -> None:
        s = self.session
        self.exited = stop_containers(s.docker_host, s.conf, names, s.emit, s.opts.progress)

    def start(self, names: list[str]) -> None:
        s = self.session
        rank = {n: i for i, n in enumerate(self.exited)}
        ordered = sorted(names, key=lambda n: rank.get(n, len(rank)))
        engine, self.engine = self.engine, None
        try:
            bad = start_containers(s.docker_host, s.conf, ordered, engine)
        finally:
            if engine is not None:
                engine.close()
        if bad:
            raise OpsError(f"could not start {', '.join(bad)} after the update",
                           "see `docker logs NAME`; then inv update --resume")

    def wait(self) -> None:
        s = self.session
        self.close()
        self.engine = answering(s.docker_host, s.conf, unit=s.engine_unit)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None


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
        self._env: st.Env | None = None
        self.lock: lk.HostLock | None = None
        self.layout: Layout | None = None  # read by read_layout(); None: nothing installed yet (containai)

    def close(self) -> None:
        """Release the engine connection and forward, the staging directory and the lock."""
        if self._env is not None and isinstance(self._env.engine, _EngineCalls):
            self._env.engine.close()
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
        if self.env.budget is None:
            self.env.budget = budget(self.host, self.conf, self.engine_unit)
        return self.env.budget

    @property
    def env(self) -> st.Env:
        """What the steps' commands need from this run (made once the host layout is known)."""
        if self._env is None:
            self._env = st.Env(self.conf, self.engine_unit, self.vm, self.emit, _EngineCalls(self), self.host)
        return self._env

    def steps(self, facts: UpdateFacts, p: pl.Plan, digests: dict[str, str],
              started: float | None = None) -> list[st.Op]:
        """Every step of applying ``p`` on this host, in order (see ``ops.update.steps.sequence``)."""
        return st.sequence(p, facts, self.conf, digests, time.time() if started is None else started,
                           vm=self.vm, engine_unit=self.engine_unit)

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
        """Refuse a plain update while the journal of an interrupted one exists (never overwrite it), or
        while a rollback copy of one is left (never replace it: it holds the install before that run)."""
        j = jr.read(self.reader, self.conf)
        if j is not None:
            raise interrupted_message(j, self.resolved.name)
        left = rb.read_left(self.reader, self.conf)
        if left is not None:
            raise rb.left_message(self.resolved.name, left.created, self.conf)

    def engine_invocation(self) -> tuple[str, str]:
        """The engine unit's (ActiveState, InvocationID) on the target."""
        _code, out, _err = self.host.probe(f"systemctl show -p ActiveState -p InvocationID {self.engine_unit}")
        values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        return values.get("ActiveState", "").strip(), values.get("InvocationID", "").strip()

    # -- resume --
    def resume(self) -> dict[str, Any]:
        """Settle what an interrupted run left (its rollback copy, see :meth:`_settle_copy`), start what the
        journal says was running and clear it when they all run."""
        j = jr.read(self.host, self.conf)
        left = rb.read_left(self.host, self.conf)
        if j is None and left is None:
            self.emit("no interrupted update to resume (no journal)")
            return {"journal": None}
        if left is not None and not left.complete:
            raise rb.incomplete_message(self.resolved.name, self.conf)
        names = list(j.containers) if j is not None else []
        if j is not None:
            self.emit(f"resuming: {len(j.containers)} container(s) were running before an interrupted update"
                      + (f" (done: {', '.join(j.done)})" if j.done else ""))
        restart = self.restart_budget()
        for unit in ("sysbox.service", self.engine_unit):
            settle(self.host, unit, restart)
        start_unit_if_loaded(self.host, "sysbox.service", restart)
        copy, rolled_back = "", None
        if left is not None:
            copy, rolled_back = self._settle_copy(left, restart)
        else:
            start_unit_if_loaded(self.host, self.engine_unit, restart)
            wait_engine(self.docker_host, self.conf, unit=self.engine_unit)
        bad = start_containers(self.docker_host, self.conf, names) if names else []
        if bad:
            kept = jr.path(self.conf)
            why = f"{rolled_back.message}; " if rolled_back is not None else ""
            raise OpsError(f"{why}could not start {', '.join(bad)} (kept in the journal {kept})",
                           "see `docker logs`/`journalctl`; rerun inv update --resume after fixing")
        if j is not None:
            jr.clear(self.host, self.conf)
            self.emit(f"started again: {', '.join(j.containers) or 'none'}")
        if rolled_back is not None:
            again = f"; the {len(names)} stopped container(s) run again" if names else ""
            raise type(rolled_back)(rolled_back.message + again, rolled_back.hint, rolled_back.exit_code)
        out: dict[str, Any] = {"journal": jr.dumps(j) if j is not None else None, "started": names}
        if copy:
            out["rollback_copy"] = copy
        return out

    def _settle_copy(self, left: rb.Left, restart: int) -> tuple[str, OpsError | None]:
        """A rollback copy of an interrupted run is there: judge the engine on what is installed now.

        - The engine still runs the invocation it ran when the copy was made: nothing ran on the new
          files; they are put back (no restart) and the update can be planned again from the previous
          install ("restored").
        - Otherwise the engine is started (restarted once more within the restart budget when it does not
          answer): when it answers, the new files did their job and the copy is dropped ("dropped");
          when it does not, the copy is put back, the previous engine restarted, and the error to report
          (after the journal's containers were started) is returned ("rolled-back").
        """
        host, conf, unit = self.host, self.conf, self.engine_unit
        where = self.resolved.name
        when = left.created or "an unknown time"
        state, invocation = self.engine_invocation()
        if state == "active" and left.engine_invocation and invocation == left.engine_invocation:
            self.emit(f"a rollback copy of the interrupted update (from {when}) is left and {unit} was not "
                      "restarted since: nothing ran on the new files; putting the previous ones back")
            rb.restore(host, conf, list(left.files), left.new_version)
            rb.drop(host, conf)
            wait_engine(self.docker_host, conf, unit=unit)
            return "restored", None
        self.emit(f"a rollback copy of the interrupted update (from {when}) is left: checking {unit} on what "
                  "is installed now")
        failure: OpsError | None = None
        try:
            start_unit_if_loaded(host, unit, restart)
            wait_engine(self.docker_host, conf, unit=unit)
        except OpsError as first:
            self.emit(f"{unit} does not answer ({first.message}); restarting it once")
            try:
                settle(host, unit, restart)
                restart_unit(host, unit, restart)
                wait_engine(self.docker_host, conf, unit=unit)
            except OpsError as second:
                failure = second
        if failure is None:
            rb.drop(host, conf)
            self.emit(f"{unit} answers on the files the interrupted update installed: its rollback copy was dropped")
            return "dropped", None
        self.emit(f"{unit} did not answer on the interrupted update's files; putting the previous dockerd bundle, "
                  "units and daemon.json back")
        try:
            settle(host, unit, restart)
            host.probe(f"systemctl stop {GUARD_UNIT}", timeout=restart)
            rb.restore(host, conf, list(left.files), left.new_version)
            self.env.budget = None
            restart_unit(host, unit, self.restart_budget())
            wait_engine(self.docker_host, conf, unit=unit)
            start_unit_if_loaded(host, GUARD_UNIT)
        except OpsError as again:
            raise OpsError(f"{unit} did not answer after the interrupted update on {where} ({failure.message}), and "
                           f"putting the previous files back failed too ({again.message}; they are kept in "
                           f"{rb.backup_dir(conf)}, the containers in {jr.path(conf)})",
                           f"see `journalctl -u {unit}`; fix the engine, then run inv update --resume") from None
        rb.drop(host, conf)
        return "rolled-back", OpsError(
            f"the interrupted update on {where} was rolled back: {unit} did not answer on its new files "
            f"({failure.message}); the previous dockerd bundle, units and daemon.json are back and the previous "
            "engine answers; the update did not happen",
            f"see `journalctl -u {unit}`, fix the bundle, then run inv update --stop-containers")

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
        """Apply the plan: run, in order, every command of the steps ``ops.update.steps.sequence`` makes
        of it (the copies and apt's checks first, the journal before any container stops, a copy of what
        is replaced before the first change); a failure puts a new install back when the new engine did
        not answer, and starts the stopped containers again."""
        host = self.host
        names = [c.name for c in p.stop]
        digests = preflight(p)  # a damaged bundle is refused before anything is stopped
        ops = self.steps(facts, p, digests)
        runner = st.Runner(host, self.env)
        backup = next((op for op in ops if isinstance(op, st.Backup)), None)
        keep = list(backup.files) if backup is not None else []
        new_version = next((op.version for op in ops if isinstance(op, st.Unpack)), None)
        guarded = backup is not None
        state = {"changed": False, "sysbox": False, "touched": False, "stopped": False}
        journaled = checked = False
        for op in ops:
            if op.region == st.CLEANUP:
                with contextlib.suppress(OpsError):
                    runner.run_op(op)
                continue
            if not checked and op.region != st.PREPARE and self.lock is not None:
                self.lock.check()  # the lock still held before the first change
            checked = checked or op.region != st.PREPARE
            if op.region != st.MAIN:
                try:
                    runner.run_op(op)
                except OpsError:
                    if op.region == st.BACKUP and journaled:
                        with contextlib.suppress(OpsError):
                            jr.clear(host, self.conf)
                    raise
                journaled = journaled or op.region == st.JOURNAL
                continue
            try:
                if op.step is not None:
                    self.emit(f"- {op.step.summary}")
                state["touched"] = state["touched"] or op.touches
                state["stopped"] = state["stopped"] or op.stops
                state["changed"] = state["changed"] or op.changes
                state["sysbox"] = state["sysbox"] or op.installs_sysbox
                runner.run_op(op)
            except OpsError as exc:
                failure = exc
                if new_version:
                    discard_unpacked(host, self.conf, new_version)
                if guarded and not self.env.engine_ok:
                    failure = self._rollback(exc, keep, new_version, state["changed"], state["sysbox"],
                                             state["touched"])
                if not journaled:
                    raise failure from None
                raise self._recover(failure, names, state["stopped"]) from None
            except KeyboardInterrupt:
                if journaled:
                    self.warn(f"interrupted: the stopped containers are recorded in {jr.path(self.conf)}; "
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
            self.env.budget = None
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
    from ops.targets import remote_target, resolve

    prefetch: list[str] = []
    alongside = None
    if opts.dry_run and remote_target(target_text, conf):
        # its reads in one SSH round trip (a real run reads once it holds the target's lock)
        from ops.sshengine import layout_alongside
        from ops.update.facts import dry_run_probes

        prefetch, alongside = dry_run_probes(conf), layout_alongside(conf.label)
    resolved = resolve(target_text, conf, base_ctx, prefetch=prefetch, alongside=alongside)
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
                left = rb.read_left(s.reader, conf)
                if left is not None:
                    emit(f"would settle the rollback copy of the interrupted update (from {left.created or '?'}): "
                         "drop it if the engine answers on what is installed now, otherwise put it back")
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
        digests = preflight(p)  # also on a dry run: a damaged bundle is reported now, not half-way
        if opts.dry_run:
            if opts.commands:
                ops = s.steps(facts, p, digests)
                env = st.Env(s.conf, s.engine_unit, s.vm)
                emit(f"{s.resolved.name}: the commands of this update, in order (root# as root, user$ as the "
                     "login user, put: a copy to the host, engine: a Docker API call):")
                for line in st.render(ops, env):
                    emit("  " + line)
                report["commands"] = st.as_json(ops, env)
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
