"""Update steps as commands: each step of an update is a typed object that yields the exact commands it
runs on the target (a shell command as root, one as the login user, a copy to the target, or an engine
call through the Docker API, shown as its ``docker`` equivalent).

:func:`sequence` turns a plan and its facts into the ordered steps of a run, preparation included (the
copies to the target and their checks, apt's simulation and download, the unpacking of the bundle, the
restart budget, the journal, the rollback copy), so the safety order of an update is a pure value a test
reads. ``Session.apply`` runs what the steps yield, one command after the other, through a
:class:`Runner`; ``inv update --dry-run --commands`` prints the same commands from the same facts
(:func:`render`), and the golden files under ``tests/unit/golden/update-commands/`` hold them.

What only a run knows is named, never hidden: the staging directory is ``mktemp``'s template
(``/tmp/containai-ops.XXXXXX``) until ``mktemp`` made it; a command that runs only under a condition
seen while running says so (``unless``); time budgets (read from the units) are not part of a command.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from ops.config import CaiConfig
from ops.errors import OpsError
from ops.units import ENGINE_UNIT, GUARD_UNIT, RenderedFile
from ops.update import journal as jr
from ops.update import plan as pl
from ops.update import rollback as rb
from ops.update import timeouts as tm
from ops.update.facts import UpdateFacts
from ops.update.hostio import (
    MKTEMP,
    PROBE_TIMEOUT,
    STAGING_TEMPLATE,
    Host,
    inline,
    install_command,
    run_as_login,
    write_failure,
    write_script,
)

# command kinds
ROOT = "root"  # a shell command run as root on the target (``sudo -n sh -c`` when the login user is not root)
USER = "user"  # a shell command run as the login user on the target
PUT = "put"  # a copy of a local file (or of text) to the target, as the login user
ENGINE = "engine"  # a call to the target's engine through the Docker API

# symbolic time budgets, resolved while running (see ops.update.timeouts)
RESTART = "restart"
APT = "apt"
#: The time a command that does real work gets when no budget of its own applies.
WORK_TIMEOUT = 600

# failure regions: what a failure of a step leads to
PREPARE = "prepare"  # nothing was changed: the error as it is
JOURNAL = "journal"  # the first journal write: nothing was stopped
BACKUP = "backup"  # the rollback copy: the journal is removed again, nothing was changed
MAIN = "main"  # the update proper: rollback of a new install, restart of the stopped containers
CLEANUP = "cleanup"  # the staging directory's removal: a failure is ignored

#: How the bundled .deb is installed (and, with -s, simulated first): apt resolves its dependencies.
APT_INSTALL = ("DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
               "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold")
#: The line the Sysbox install prints last: sysbox.service's invocation before and after, and its state.
SYSBOX_MARK = "@@CAI-SYSBOX"


@dataclass(frozen=True)
class Result:
    """What a command returned, on which host."""

    code: int
    out: str
    err: str
    where: str


Check = Callable[[Result], None]


@dataclass(frozen=True)
class Command:
    """One command of a step, exactly as it runs (see the module docstring for the kinds)."""

    kind: str
    text: str  # ROOT/USER: the shell command; PUT: the remote path; ENGINE: its docker CLI equivalent
    what: str = ""  # for messages
    timeout: int | str = PROBE_TIMEOUT  # seconds, or RESTART / APT (the host's budgets)
    unless: str = ""  # skipped when this, seen while running, holds
    source: str = ""  # PUT: the local file
    data: str | None = field(default=None, repr=False)  # PUT: text copied instead of a local file
    note: str = ""  # ENGINE: the API requests behind it
    check: Check | None = field(default=None, compare=False, repr=False)  # judges the result
    call: Callable[[], None] | None = field(default=None, compare=False, repr=False)  # ENGINE: the call

    def lines(self) -> list[str]:
        """The command as text lines (for ``--dry-run --commands`` and the golden files)."""
        if self.kind == PUT:
            src = self.source if self.data is None else f"<{len(self.data.encode())} bytes of text>"
            first = [f"put    {src} -> {self.text}"]
        else:
            lead = {ROOT: "root#  ", USER: "user$  ", ENGINE: "engine "}[self.kind]
            body = self.text.rstrip("\n").split("\n")
            first = [lead + body[0]] + ["       " + line for line in body[1:]]
            if self.note:
                first.append(f"       ({self.note})")
        if self.unless:
            first.append(f"       (skipped when {self.unless})")
        return first

    def as_dict(self) -> dict[str, Any]:
        """The JSON form."""
        out: dict[str, Any] = {"kind": self.kind, "command": self.text}
        if self.kind == PUT:
            out["source"] = self.source if self.data is None else f"<{len(self.data.encode())} bytes of text>"
        if self.note:
            out["api"] = self.note
        if self.unless:
            out["unless"] = self.unless
        if isinstance(self.timeout, str):
            out["timeout"] = f"the host's {self.timeout} budget"
        return out


class EngineCalls(Protocol):
    """The engine calls a run makes (the session implements them on the target's engine)."""

    def stop(self, names: list[str]) -> None:
        """Stop the containers in parallel; fail when one still runs."""

    def start(self, names: list[str]) -> None:
        """Start the containers that do not run; fail naming those that could not be started."""

    def wait(self) -> None:
        """Wait until the engine answers a ping."""


class Env:
    """What the commands of a run need that only the run knows (a dry run keeps the defaults)."""

    def __init__(self, conf: CaiConfig, engine_unit: str = ENGINE_UNIT, vm: bool = False,
                 emit: Callable[[str], None] | None = None, engine: EngineCalls | None = None,
                 host: Host | None = None) -> None:
        self.conf = conf
        self.engine_unit = engine_unit
        self.vm = vm
        self.emit = emit or (lambda _line: None)
        self.engine = engine
        self.host = host
        self.staging = STAGING_TEMPLATE  # the real directory once mktemp made it
        self.budget: int | None = None  # the restart budget, read from the units
        self.sysbox_restarted = False  # the package's scripts restarted sysbox.service on the new binaries
        self.engine_ok = False  # the new engine answered a ping

    @property
    def socket(self) -> str:
        """The engine's docker host on the target (what the engine calls reach)."""
        return self.conf.docker_host

    def seconds(self, timeout: int | str) -> int:
        """A command's timeout in seconds."""
        if isinstance(timeout, int):
            return timeout
        restart = self.budget if self.budget is not None else tm.restart_budget(self.conf, {}, self.engine_unit)
        return tm.apt_budget(restart) if timeout == APT else restart


# --- the commands' results, judged ------------------------------------------------------------------

def _tail(r: Result) -> str:
    lines = [line for line in (r.err or r.out).strip().splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else ""


def failed(what: str, hint: str = "") -> Check:
    """The usual judgement: a non-zero exit is ``<what> failed on <host> (exit N): <last line>``."""
    def check(r: Result) -> None:
        if r.code != 0:
            tail = _tail(r)
            raise OpsError(f"{what} failed on {r.where} (exit {r.code})" + (f": {tail}" if tail else ""),
                           hint or "fix the cause shown, then rerun (inv update --resume restarts stopped "
                           "containers)")
    return check


def apt_reason(code: int, out: str, err: str) -> str:
    """Pure: the most telling line of a failed apt-get run (an unmet dependency before apt's summary)."""
    unmet = [line.strip() for line in out.splitlines() if "Depends:" in line or "Conflicts:" in line]
    if unmet:
        return unmet[0][:300]
    tail = [line.strip() for line in (err or out).strip().splitlines() if line.strip()]
    return tail[-1][:300] if tail else f"exit {code}"


def parse_sysbox_mark(text: str) -> bool:
    """Pure parser of the Sysbox install's last line (:data:`SYSBOX_MARK`): True when sysbox.service
    runs under a new invocation (the package's scripts restarted it on the new binaries)."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith(SYSBOX_MARK):
            values = dict(part.split("=", 1) for part in line[len(SYSBOX_MARK):].split() if "=" in part)
    after = values.get("after", "")
    return bool(after) and values.get("state") == "active" and after != values.get("before", "")


# --- the steps --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Op:
    """One step of a run: the commands it yields, what a failure of it leads to, and what it changes."""

    region: ClassVar[str] = MAIN
    changes: ClassVar[bool] = False  # replaces something the engine runs on (rollback needed)
    touches: ClassVar[bool] = False  # the running engine or Sysbox may go down from here on
    stops: ClassVar[bool] = False  # containers are stopped
    installs_sysbox: ClassVar[bool] = False

    @property
    def title(self) -> str:
        """What the step does (the heading of its commands)."""
        return type(self).__name__

    @property
    def step(self) -> pl.Step | None:
        """The plan step this is (None for the preparation and bookkeeping steps)."""
        return None

    def commands(self, env: Env) -> Iterator[Command]:
        """The commands, in order (a generator: a later command may use what an earlier one returned)."""
        raise NotImplementedError


@dataclass(frozen=True)
class MakeStaging(Op):
    """A private temporary directory on the target for the copies (as the login user)."""

    region: ClassVar[str] = PREPARE

    @property
    def title(self) -> str:
        return "make the private staging directory on the target"

    def commands(self, env: Env) -> Iterator[Command]:
        def adopt(r: Result) -> None:
            if r.code != 0 or not r.out.strip():
                raise OpsError(f"cannot create a temporary directory on {r.where}: {r.err.strip()[:200]}",
                               "check that /tmp is writable")
            env.staging = r.out.strip()
            if env.host is not None:
                env.host.adopt_staging(env.staging)
        yield Command(USER, MKTEMP, "mktemp", check=adopt)


def _put_checked(env: Env, local: str, digest: str) -> Iterator[Command]:
    remote = f"{env.staging}/{Path(local).name}"
    yield Command(PUT, remote, f"copying {Path(local).name}", source=local)

    def same(r: Result) -> None:
        failed("sha256sum")(r)
        if r.out.split()[:1] != [digest]:
            raise OpsError(f"the copy of {Path(remote).name} on {r.where} does not match its checksum",
                           "check free space on the target and rerun")
    yield Command(ROOT, f"sha256sum {shlex.quote(remote)}", "sha256sum", check=same)


@dataclass(frozen=True)
class Stage(Op):
    """Copy a bundled file to the staging directory and check its sha256 there."""

    local: str
    digest: str
    region: ClassVar[str] = PREPARE

    @property
    def title(self) -> str:
        return f"copy {Path(self.local).name} to the target and check its sha256 there"

    def commands(self, env: Env) -> Iterator[Command]:
        yield from _put_checked(env, self.local, self.digest)


@dataclass(frozen=True)
class StageSysbox(Op):
    """Copy the bundled .deb, check it, and have apt simulate installing it and download what it needs,
    all before anything is stopped (a package apt cannot install is refused while nothing changed)."""

    local: str
    digest: str
    region: ClassVar[str] = PREPARE

    @property
    def title(self) -> str:
        return f"copy {Path(self.local).name} to the target, check it, simulate and download its install"

    def commands(self, env: Env) -> Iterator[Command]:
        q = shlex.quote
        name = Path(self.local).name
        yield from _put_checked(env, self.local, self.digest)
        remote = f"{env.staging}/{name}"
        yield Command(ROOT, f"chmod 0644 {q(remote)} && chmod 0755 {q(env.staging)}", "chmod",
                      check=failed("chmod"))

        def simulated(r: Result) -> None:
            if r.code != 0:
                raise OpsError(f"apt-get install {name} would fail on {r.where} "
                               f"({apt_reason(r.code, r.out, r.err)}); nothing was changed",
                               "run `apt-get update` there and check its apt sources (the package needs fuse3 "
                               "and its other dependencies from them), then rerun")
        yield Command(ROOT, f"{APT_INSTALL} -s {q(remote)}", f"apt-get install -s {name}", 300, check=simulated)

        def downloaded(r: Result) -> None:
            if r.code != 0:
                raise OpsError(f"apt-get could not download what {name} needs on {r.where} "
                               f"({apt_reason(r.code, r.out, r.err)}); nothing was changed",
                               "check the host's apt sources and its network, then rerun")
        # fetch what the package needs into apt's cache now: the install while the containers are down
        # downloads nothing
        yield Command(ROOT, f"{APT_INSTALL} --download-only {q(remote)}", f"apt-get install --download-only {name}",
                      tm.APT_BASE, check=downloaded)


@dataclass(frozen=True)
class ReadBudget(Op):
    """Read the restart budget from the installed units now, not while the containers are down."""

    region: ClassVar[str] = PREPARE

    @property
    def title(self) -> str:
        return "read the restart budget from the installed units"

    def commands(self, env: Env) -> Iterator[Command]:
        def keep(r: Result) -> None:
            env.budget = tm.restart_budget(env.conf, tm.parse_show(r.out), env.engine_unit)
        yield Command(ROOT, tm.show_command((env.engine_unit, GUARD_UNIT)), "systemctl show", check=keep)


def write_commands(env: Env, files: Sequence[tuple[str, str, int]], fail: Check | None = None
                   ) -> Iterator[Command]:
    """The commands writing files atomically and durably (see ``ops.update.hostio``): small ones in ONE
    command that carries them, larger ones copied to the staging directory first."""
    files = list(files)
    if not files:
        return
    if inline(files):
        def judged(r: Result) -> None:
            if r.code != 0:
                if fail is not None:
                    fail(r)
                raise write_failure(files, r.code, r.out, r.err, r.where)
        yield Command(ROOT, write_script(files), f"writing {files[0][0]}", check=judged)
        return
    for path, text, mode in files:
        staged = f"{env.staging}/{Path(path).name}"
        yield Command(PUT, staged, f"copying {Path(path).name}", data=text)
        yield Command(ROOT, install_command(staged, path, mode), f"writing {path}",
                      check=fail or failed(f"writing {path}"))


@dataclass(frozen=True)
class WriteJournal(Op):
    """Write the journal of the running containers (durably), before any stops and after each step."""

    journal: jr.Journal
    first: bool = False

    @property
    def region(self) -> str:  # type: ignore[override]
        return JOURNAL if self.first else MAIN

    @property
    def title(self) -> str:
        done = f" (done: {', '.join(self.journal.done)})" if self.journal.done else " before any container stops"
        return f"write the update journal{done}"

    def commands(self, env: Env) -> Iterator[Command]:
        where = jr.path(env.conf)

        def fail(r: Result) -> None:
            error = write_failure([(where, "", 0o600)], r.code, r.out, r.err, r.where)
            if self.first:
                raise OpsError(f"cannot write the update journal {where} ({error.message}); nothing was stopped",
                               f"make cai.state_dir ({env.conf.state_dir}) writable or point it elsewhere")
            raise OpsError(f"cannot update the update journal {where} ({error.message})",
                           f"make cai.state_dir ({env.conf.state_dir}) writable; then inv update --resume")
        yield from write_commands(env, [(where, jr.dumps(self.journal), 0o600)], fail)


@dataclass(frozen=True)
class Backup(Op):
    """Keep a copy of what the update replaces, before anything changes (see ``ops.update.rollback``)."""

    files: tuple[str, ...]
    new_version: str | None
    region: ClassVar[str] = BACKUP

    @property
    def title(self) -> str:
        return "keep a copy of what the update replaces (before anything changes)"

    def commands(self, env: Env) -> Iterator[Command]:
        what = f"keeping a copy of the installed files in {rb.backup_dir(env.conf)} (nothing was changed)"

        def judged(r: Result) -> None:
            if r.code == rb.LEFT_STATUS:  # a copy of an interrupted run is there: never replaced
                raise rb.left_message(r.where, r.err.strip().splitlines()[-1] if r.err.strip() else "", env.conf)
            failed(what)(r)
        yield Command(ROOT, rb.backup_script(env.conf, list(self.files), self.new_version, env.engine_unit),
                      what, WORK_TIMEOUT, check=judged)


def unpacked_dir(conf: CaiConfig, version: str) -> str:
    """Where the bundle is unpacked before the containers stop (beside its versioned directory)."""
    return f"{conf.opt_dir.rstrip('/')}/docker/.{version}.cai-new"


def unpack_script(conf: CaiConfig, staged: str, version: str) -> str:
    """Shell that unpacks the staged bundle next to ``<opt_dir>/docker/<version>/`` (under a temporary
    name) and checks it holds dockerd."""
    q = shlex.quote
    return f"""set -e
tmp={q(unpacked_dir(conf, version))}; tgz={q(staged)}
rm -rf "$tmp"; mkdir -p "$tmp"
tar -xzf "$tgz" -C "$tmp" --no-same-owner
if [ ! -x "$tmp/docker/dockerd" ]; then echo "the tarball has no docker/dockerd" >&2; rm -rf "$tmp"; exit 3; fi
"""


def switch_script(conf: CaiConfig, version: str) -> str:
    """Shell that moves the unpacked bundle to ``<opt_dir>/docker/<version>/``, switches every link of
    ``<opt_dir>/bin`` atomically (new link, rename), drops links into older versions it no longer has,
    and writes VERSION atomically last."""
    q = shlex.quote
    opt = conf.opt_dir.rstrip("/")
    return f"""set -e
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


@dataclass(frozen=True)
class Unpack(Op):
    """Unpack the staged bundle beside its versioned directory: nothing the engine runs on changes, so
    this happens before the containers stop; the switch after the stop is renames only."""

    tarball: str
    version: str

    @property
    def title(self) -> str:
        return f"unpack the dockerd bundle {self.version} beside its directory (before any container stops)"

    def commands(self, env: Env) -> Iterator[Command]:
        what = f"unpacking the dockerd bundle {self.version}"
        yield Command(ROOT, unpack_script(env.conf, f"{env.staging}/{Path(self.tarball).name}", self.version),
                      what, WORK_TIMEOUT, check=failed(what))


@dataclass(frozen=True)
class PlanOp(Op):
    """A step of the plan (its summary is shown as it runs; the journal records it as done)."""

    plan_step: pl.Step

    @property
    def step(self) -> pl.Step | None:
        return self.plan_step

    @property
    def title(self) -> str:
        return self.plan_step.summary


@dataclass(frozen=True)
class StopContainers(PlanOp):
    """Stop the running managed containers in parallel, each with ``cai.stop_timeout``."""

    names: tuple[str, ...] = ()
    stops: ClassVar[bool] = True

    def commands(self, env: Env) -> Iterator[Command]:
        names = list(self.names)

        def call() -> None:
            assert env.engine is not None
            env.engine.stop(names)
        yield Command(ENGINE, f"docker -H {env.socket} stop -t {env.conf.stop_timeout} {' '.join(names)}",
                      f"stopping {len(names)} container(s)",
                      note=f"POST /containers/NAME/stop?t={env.conf.stop_timeout} for each, in parallel; "
                      "then GET /containers/json: none of them may still run", call=call)


@dataclass(frozen=True)
class SwitchDockerd(PlanOp):
    """Move the unpacked bundle into place, switch the links atomically, write VERSION last."""

    version: str = ""
    changes: ClassVar[bool] = True

    def commands(self, env: Env) -> Iterator[Command]:
        what = f"installing the dockerd bundle {self.version}"
        yield Command(ROOT, switch_script(env.conf, self.version), what, WORK_TIMEOUT, check=failed(what))


def sysbox_install_command(staged: str) -> str:
    """``apt-get install`` of the staged .deb (from apt's cache: the download happened before the stop),
    between two readings of sysbox.service's invocation: a new one, active, means the package's scripts
    restarted Sysbox on the new binaries (see :func:`parse_sysbox_mark`)."""
    show = "systemctl show -p InvocationID --value sysbox.service 2>/dev/null"
    return (f"b=$({show}); {APT_INSTALL} {shlex.quote(staged)} || exit $?; "
            f"echo \"{SYSBOX_MARK} before=$b after=$({show}) state=$(systemctl is-active sysbox.service)\"")


@dataclass(frozen=True)
class InstallSysbox(PlanOp):
    """``apt-get install`` the bundled .deb, so its dependencies (fuse3 first) resolve."""

    deb: str = ""
    installs_sysbox: ClassVar[bool] = True
    touches: ClassVar[bool] = True

    def commands(self, env: Env) -> Iterator[Command]:
        name = Path(self.deb).name

        def judged(r: Result) -> None:
            failed(f"apt-get install {name}", "check the host's apt sources and run `apt-get update` there "
                   "(the package needs fuse3 and its other dependencies from them), then rerun")(r)
            env.sysbox_restarted = parse_sysbox_mark(r.out)
        yield Command(ROOT, sysbox_install_command(f"{env.staging}/{name}"), f"apt-get install {name}", APT,
                      check=judged)


@dataclass(frozen=True)
class WriteFiles(PlanOp):
    """Write the drifted units, daemon.json and the stop-hook script atomically (one command)."""

    files: tuple[RenderedFile, ...] = ()
    changes: ClassVar[bool] = True

    def commands(self, env: Env) -> Iterator[Command]:
        yield from write_commands(env, [(f.path, f.text, f.mode) for f in self.files])


@dataclass(frozen=True)
class Reload(PlanOp):
    """``daemon-reload``, enable the engine unit (lima-vm: the stop hook, into docker.service), and read
    the new units' timeouts in the same command (the restart budget counts from now on)."""

    def commands(self, env: Env) -> Iterator[Command]:
        enable = GUARD_UNIT if env.vm else ENGINE_UNIT
        what = f"systemctl daemon-reload and enable {enable}"

        def keep(r: Result) -> None:
            failed(what)(r)
            env.budget = tm.restart_budget(env.conf, tm.parse_show(r.out), env.engine_unit)
        yield Command(ROOT, f"systemctl daemon-reload && systemctl enable {enable} >/dev/null && "
                      + tm.show_command((env.engine_unit, GUARD_UNIT)), what, check=keep)


def restart_command(unit: str) -> str:
    """``systemctl restart`` of a unit; a start-limit-hit must not block it (one command: the containers
    may be down meanwhile)."""
    return f"systemctl reset-failed {unit} 2>/dev/null; systemctl restart {unit}"


def restarted(unit: str) -> Check:
    """The judgement of :func:`restart_command`: the unit's status is the way out."""
    def check(r: Result) -> None:
        if r.code != 0:
            last = r.err.strip().splitlines()[-1][:200] if r.err.strip() else r.code
            raise OpsError(f"{unit} did not (re)start: {last}",
                           f"see `systemctl status {unit}` and `journalctl -u {unit}`")
    return check


@dataclass(frozen=True)
class RestartSysbox(PlanOp):
    """Restart sysbox.service once: not when the package's scripts just restarted it on the new Sysbox."""

    touches: ClassVar[bool] = True

    def commands(self, env: Env) -> Iterator[Command]:
        if env.sysbox_restarted:
            env.emit("  (the package's scripts restarted sysbox.service on the new Sysbox: not restarted twice)")
            return
        yield Command(ROOT, restart_command("sysbox.service"), "systemctl restart sysbox.service", RESTART,
                      unless="the package's scripts restarted sysbox.service on the new Sysbox",
                      check=restarted("sysbox.service"))


@dataclass(frozen=True)
class RestartEngine(PlanOp):
    """Restart the engine explicitly and wait for its ping; then drop the rollback copy and start the
    stop hook (one command), here or, when containers were stopped, after they run again (:class:`ArmGuard`:
    restarting the engine restarts the hook already, through ``PartOf=``)."""

    unit: str = ENGINE_UNIT
    drop_backup: bool = False
    finish: bool = True
    touches: ClassVar[bool] = True

    def commands(self, env: Env) -> Iterator[Command]:
        yield Command(ROOT, restart_command(self.unit), f"systemctl restart {self.unit}", RESTART,
                      check=restarted(self.unit))

        def wait() -> None:
            assert env.engine is not None
            env.engine.wait()
            env.engine_ok = True
        yield Command(ENGINE, f"docker -H {env.socket} version", "waiting for the engine",
                      note="GET /version until it answers, within 90 s", call=wait)
        if self.finish:
            yield arm_guard(env, self.drop_backup)


def arm_guard(env: Env, drop_backup: bool) -> Command:
    """Drop the rollback copy (the new engine answered) and start the stop hook, in one command."""
    drop = f"rm -rf {shlex.quote(rb.backup_dir(env.conf))}; " if drop_backup else ""
    return Command(ROOT, f"{drop}systemctl start {GUARD_UNIT}", f"systemctl start {GUARD_UNIT}",
                   check=failed(f"systemctl start {GUARD_UNIT}"))


@dataclass(frozen=True)
class ArmGuard(Op):
    """After the containers run again: drop the rollback copy and start the stop hook (kept out of the
    time the containers are down)."""

    drop_backup: bool = False

    @property
    def title(self) -> str:
        return ("drop the rollback copy and start the stop hook" if self.drop_backup
                else "start the stop hook")

    def commands(self, env: Env) -> Iterator[Command]:
        yield arm_guard(env, self.drop_backup)


@dataclass(frozen=True)
class StartGuard(PlanOp):
    """Start the stop hook (it must be active for its ExecStop to run)."""

    def commands(self, env: Env) -> Iterator[Command]:
        yield Command(ROOT, f"systemctl start {GUARD_UNIT}", f"systemctl start {GUARD_UNIT}",
                      check=failed(f"systemctl start {GUARD_UNIT}"))


@dataclass(frozen=True)
class StartContainers(PlanOp):
    """Start the containers that were running."""

    names: tuple[str, ...] = ()

    def commands(self, env: Env) -> Iterator[Command]:
        names = list(self.names)

        def call() -> None:
            assert env.engine is not None
            env.engine.start(names)
        yield Command(ENGINE, f"docker -H {env.socket} start {' '.join(names)}",
                      f"starting {len(names)} container(s)",
                      note="POST /containers/NAME/start for each, a few at a time, in the order they "
                      "exited (one that runs answers 304); then GET /containers/json: all of them must run",
                      call=call)


@dataclass(frozen=True)
class Cleanup(Op):
    """Remove the staging directory (also done when the run ends any other way)."""

    region: ClassVar[str] = CLEANUP

    @property
    def title(self) -> str:
        return "remove the staging directory"

    def commands(self, env: Env) -> Iterator[Command]:
        def forget(_r: Result) -> None:
            if env.host is not None:
                env.host.adopt_staging("")
        yield Command(USER, f"rm -rf {shlex.quote(env.staging)}", "rm", check=forget)


# --- the sequence of a run ----------------------------------------------------------------------------

def sequence(p: pl.Plan, facts: UpdateFacts, conf: CaiConfig, digests: dict[str, str], started: float,
             vm: bool = False, engine_unit: str = ENGINE_UNIT) -> list[Op]:
    """Pure: every step of applying ``p`` to a host with ``facts``, in the order they run.

    Before any container stops: the copies to the target and their checks, apt's simulation and
    download, the restart budget, the journal (only when containers stop), the rollback copy (before the
    first change, when something the engine runs on is replaced), the unpacking of the bundle; when
    containers stop, the drifted files are written and reloaded before the stop too. After each plan
    step the journal records it as done (the restart of the engine together with the start that follows
    it: nothing runs between the engine answering and the containers' start).
    """
    names = tuple(c.name for c in p.stop)
    by = {s.action: s for s in p.steps}
    drifted = {d.path for d in facts.drift}
    files = tuple(f for f in facts.rendered if f.path in drifted)
    new_version = str(by[pl.DOCKERD].data["version"]) if pl.DOCKERD in by else None
    tarball = str(by[pl.DOCKERD].data["tarball"]) if pl.DOCKERD in by else ""
    deb = str(by[pl.SYSBOX].data["deb"]) if pl.SYSBOX in by else ""
    keep = tuple(f.path for f in files)
    # something the engine runs on is replaced (on lima-vm only the stop hook is ours: nothing to roll
    # back that would make the VM's docker.service start)
    guarded = bool(keep or new_version) and not vm

    ops: list[Op] = []
    staged = bool(tarball or deb) or not inline([(f.path, f.text, f.mode) for f in files])
    if staged:
        ops.append(MakeStaging())
    if tarball:
        ops.append(Stage(tarball, digests[tarball]))
    if deb:
        ops.append(StageSysbox(deb, digests[deb]))
    if names or any(a in by for a in (pl.SYSBOX, pl.RESTART_SYSBOX, pl.RESTART_ENGINE)):
        ops.append(ReadBudget())
    journal = jr.Journal(facts.target, names, tuple(p.actions()), started=started) if names else None
    if journal is not None:
        ops.append(WriteJournal(journal, first=True))
    if guarded:
        ops.append(Backup(keep, new_version))
    if new_version:
        ops.append(Unpack(tarball, new_version))
    # while the containers are down only what needs them down runs: the drifted files are written and
    # systemd reads them (daemon-reload restarts nothing) before the stop
    early = (pl.UNITS, pl.RELOAD) if names else ()
    ordered = [s for s in p.steps if s.action in early] + [s for s in p.steps if s.action not in early]
    # while the containers are down nothing waits that can run after they are up again
    late_guard = bool(names) and pl.RESTART_ENGINE in by and pl.START in by
    actions = [s.action for s in ordered]
    for i, s in enumerate(ordered):
        ops.append(plan_op(s, names, files, engine_unit, drop_backup=guarded, finish=not late_guard))
        if journal is not None:
            journal = journal.with_done(s.action)
            # nothing is written between the engine answering and the start of the containers: the
            # journal written after the start records both steps (it already names every container a
            # --resume starts, which is all it needs to)
            if not (s.action == pl.RESTART_ENGINE and actions[i + 1:i + 2] == [pl.START]):
                ops.append(WriteJournal(journal))
    if late_guard:
        ops.append(ArmGuard(guarded))
    if staged:
        ops.append(Cleanup())
    return ops


def plan_op(s: pl.Step, names: tuple[str, ...], files: tuple[RenderedFile, ...], engine_unit: str,
            drop_backup: bool, finish: bool = True) -> Op:
    """The typed step of a plan step."""
    if s.action == pl.STOP:
        return StopContainers(s, names)
    if s.action == pl.DOCKERD:
        return SwitchDockerd(s, str(s.data["version"]))
    if s.action == pl.SYSBOX:
        return InstallSysbox(s, str(s.data["deb"]))
    if s.action == pl.UNITS:
        return WriteFiles(s, files)
    if s.action == pl.RELOAD:
        return Reload(s)
    if s.action == pl.RESTART_SYSBOX:
        return RestartSysbox(s)
    if s.action == pl.RESTART_ENGINE:
        return RestartEngine(s, engine_unit, drop_backup, finish)
    if s.action == pl.START_GUARD:
        return StartGuard(s)
    if s.action == pl.START:
        return StartContainers(s, names)
    raise ValueError(f"unknown step {s.action}")


def listing(ops: Sequence[Op], env: Env) -> list[tuple[Op, list[Command]]]:
    """Every command of ``ops`` as a dry run sees them (nothing runs; ``env`` keeps its defaults)."""
    return [(op, list(op.commands(env))) for op in ops]


def render(ops: Sequence[Op], env: Env) -> list[str]:
    """The commands of ``ops`` as text: a heading per step, then its commands (see :meth:`Command.lines`)."""
    out: list[str] = []
    for i, (op, cmds) in enumerate(listing(ops, env), 1):
        out.append(f"# {i}. {op.title}")
        for c in cmds:
            out.extend(c.lines())
    return out


def as_json(ops: Sequence[Op], env: Env) -> list[dict[str, Any]]:
    """The commands of ``ops`` in JSON form, per step."""
    return [{"step": op.title, "action": op.step.action if op.step else type(op).__name__,
             "commands": [c.as_dict() for c in cmds]} for op, cmds in listing(ops, env)]


# --- running them -------------------------------------------------------------------------------------

class Runner:
    """Runs commands on a target: shell commands as root (or as the login user), copies, engine calls."""

    def __init__(self, host: Host, env: Env) -> None:
        self.host = host
        self.env = env

    def run(self, cmd: Command) -> None:
        """Run one command and judge its result (``cmd.check``, else a non-zero exit fails)."""
        if cmd.kind == ENGINE:
            assert cmd.call is not None
            cmd.call()
            return
        if cmd.kind == PUT:
            if cmd.data is None:
                self.host.put(cmd.source, cmd.text)
                return
            fd, local = tempfile.mkstemp(prefix="cai-")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as handle:
                    handle.write(cmd.data)
                self.host.put(local, cmd.text)
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(local)
            return
        seconds = self.env.seconds(cmd.timeout)
        if cmd.kind == ROOT:
            code, out, err = self.host.run(cmd.text, cmd.what, seconds)
        else:
            code, out, err = run_as_login(self.host.ctx, cmd.text, seconds)
        (cmd.check or failed(cmd.what or cmd.text.split()[0]))(Result(code, out, err, self.host.name))

    def run_op(self, op: Op) -> None:
        """Run every command a step yields, in order."""
        for cmd in op.commands(self.env):
            self.run(cmd)

