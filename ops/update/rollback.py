"""Keep what an update replaces until the new engine answers, and put it back when it does not.

Before the first change, the update copies onto the target (``<cai.state_dir>/rollback/``, as root,
synced): every file it will write (units, daemon.json, the stop-hook script) or the fact that it did
not exist, the links of ``<opt_dir>/bin`` and ``<opt_dir>/VERSION``, and whether the new bundle's
version directory already existed. ``restore`` puts all of it back the same way the update installs
(a temporary name beside the target, then a rename), removes what did not exist before, and reloads
systemd. The copy is dropped once the new engine answered a ping.

The copy describes itself (``manifest``: when it was made, the engine's systemd invocation then, the
new bundle version, the path of every kept file), so ``inv update --resume`` can judge and restore a
copy that a killed run left behind without the plan that made it. A copy that exists is never
replaced: a new one is refused until ``--resume`` put it back or dropped it (see :func:`left_message`).

The Sysbox package is not part of it: apt cannot go back to a package it no longer has, and an older
Sysbox under a newer engine is what the host ran before anyway.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from ops.config import CaiConfig
from ops.errors import OpsError
from ops.findings import Finding
from ops.update.hostio import Host

MANIFEST = "manifest"
#: The exit status of the backup script when a copy is already there (it is never replaced).
LEFT_STATUS = 4
_PRESENT = "@@CAI-ROLLBACK-COPY"


def backup_dir(conf: CaiConfig) -> str:
    """Where the copy lives on the target."""
    return f"{conf.state_dir.rstrip('/')}/rollback"


def backup_script(conf: CaiConfig, files: list[str], new_version: str | None,
                  engine_unit: str = "containai-docker.service") -> str:
    """Shell that copies what the update will replace into :func:`backup_dir` (see the module); it
    refuses (exit :data:`LEFT_STATUS`, the copy's ``created`` line on stderr) when a copy is there."""
    q = shlex.quote
    b = backup_dir(conf)
    opt = conf.opt_dir.rstrip("/")
    manifest = ['echo "created $(date -u +%Y-%m-%dT%H:%M:%SZ)"',
                f'echo "engine $(systemctl show -p InvocationID --value {q(engine_unit)} 2>/dev/null)"']
    if new_version:
        manifest.append(f"printf 'version %s\\n' {q(new_version)}")
    manifest += [f"printf 'file {i} %s\\n' {q(path)}" for i, path in enumerate(files)]
    lines = ["set -e", f"b={q(b)}; opt={q(opt)}",
             f'if [ -e "$b" ]; then sed -n "s/^created //p" "$b/{MANIFEST}" >&2 2>/dev/null; '
             f"exit {LEFT_STATUS}; fi",
             'rm -rf "$b.new"; mkdir -p "$b.new/files"',
             "{ " + "; ".join(manifest) + f'; }} > "$b.new/{MANIFEST}"']
    for i, path in enumerate(files):
        lines.append(f"if [ -e {q(path)} ] || [ -L {q(path)} ]; then cp -a {q(path)} \"$b.new/files/{i}\"; "
                     f"else : > \"$b.new/files/{i}.absent\"; fi")
    lines += [
        'if [ -d "$opt/bin" ]; then cp -a "$opt/bin" "$b.new/bin"; else : > "$b.new/bin.absent"; fi',
        'if [ -e "$opt/VERSION" ]; then cp -a "$opt/VERSION" "$b.new/VERSION"; else : > "$b.new/VERSION.absent"; fi',
    ]
    if new_version:
        lines.append(f"if [ ! -e \"$opt/docker/\"{q(new_version)} ]; then : > \"$b.new/version-dir.created\"; fi")
    lines += ['sync "$b.new" "$b.new/files"', 'mv -T "$b.new" "$b"', f'sync {q(conf.state_dir)}']
    return "\n".join(lines) + "\n"


def restore_script(conf: CaiConfig, files: list[str], new_version: str | None) -> str:
    """Shell that puts back what :func:`backup_script` kept, each file by rename."""
    q = shlex.quote
    b = backup_dir(conf)
    opt = conf.opt_dir.rstrip("/")
    lines = ["set -e", f"b={q(b)}; opt={q(opt)}", '[ -d "$b" ] || { echo "no rollback copy in $b" >&2; exit 3; }']
    for i, path in enumerate(files):
        tmp = f"{path.rsplit('/', 1)[0] or '/'}/.{path.rsplit('/', 1)[-1]}.cai-old"
        lines.append(f"if [ -e \"$b/files/{i}\" ] || [ -L \"$b/files/{i}\" ]; then "
                     f"rm -f {q(tmp)}; cp -a \"$b/files/{i}\" {q(tmp)}; sync {q(tmp)}; mv -f {q(tmp)} {q(path)}; "
                     f"elif [ -e \"$b/files/{i}.absent\" ]; then rm -f {q(path)}; fi")
    lines += [
        'if [ -d "$b/bin" ]; then mkdir -p "$opt/bin"',
        '  for l in "$b"/bin/* "$b"/bin/.[!.]*; do [ -e "$l" ] || [ -L "$l" ] || continue',
        '    n=$(basename "$l"); rm -f "$opt/bin/.$n.cai-old"; cp -a "$l" "$opt/bin/.$n.cai-old"',
        '    mv -Tf "$opt/bin/.$n.cai-old" "$opt/bin/$n"; done',
        '  for l in "$opt"/bin/*; do [ -e "$l" ] || [ -L "$l" ] || continue',
        '    n=$(basename "$l"); [ -e "$b/bin/$n" ] || [ -L "$b/bin/$n" ] || rm -f "$l"; done',
        'elif [ -e "$b/bin.absent" ]; then rm -rf "$opt/bin"; fi',
        'if [ -e "$b/VERSION" ]; then cp -a "$b/VERSION" "$opt/.VERSION.cai-old"; '
        'mv -f "$opt/.VERSION.cai-old" "$opt/VERSION"; '
        'elif [ -e "$b/VERSION.absent" ]; then rm -f "$opt/VERSION"; fi',
    ]
    if new_version:
        lines.append(f"if [ -e \"$b/version-dir.created\" ]; then rm -rf \"$opt/docker/\"{q(new_version)}; fi")
    lines += ['sync "$opt" "$opt/bin" 2>/dev/null || true']
    return "\n".join(lines) + "\n"


def backup(host: Host, conf: CaiConfig, files: list[str], new_version: str | None) -> None:
    """Keep a copy of what the update replaces (fails before anything was changed or stopped)."""
    host.sh(backup_script(conf, files, new_version),
            what=f"keeping a copy of the installed files in {backup_dir(conf)} (nothing was changed)")


def restore(host: Host, conf: CaiConfig, files: list[str], new_version: str | None) -> None:
    """Put the kept copy back and reload systemd."""
    host.sh(restore_script(conf, files, new_version), what="putting the previous files back")
    host.sh("systemctl daemon-reload", what="systemctl daemon-reload")


def drop(host: Host, conf: CaiConfig) -> None:
    """Remove the kept copy (the new engine answered)."""
    host.sh(f"rm -rf {shlex.quote(backup_dir(conf))}", what="removing the rollback copy")


# --- a copy left by an interrupted run ----------------------------------------------------------------

@dataclass(frozen=True)
class Left:
    """A rollback copy found on the target (its manifest, parsed)."""

    created: str  # UTC, as the backup wrote it ("" when unknown)
    engine_invocation: str  # the engine unit's InvocationID when the copy was made ("" when it did not run)
    new_version: str | None  # the dockerd bundle version the run installed, if any
    files: tuple[str, ...]  # the kept files, in the order of files/<i>
    complete: bool = True  # False: no readable manifest (the copy cannot be put back by itself)


def left_probe(conf: CaiConfig) -> str:
    """The read-only command that shows a left copy and its manifest (nothing when there is none)."""
    b = shlex.quote(backup_dir(conf))
    return f"if [ -d {b} ]; then echo {_PRESENT}; cat {b}/{MANIFEST} 2>/dev/null; fi; true"


def parse_manifest(text: str) -> Left:
    """Pure parser of a copy's manifest (see :func:`backup_script`)."""
    created = engine = ""
    version: str | None = None
    files: dict[int, str] = {}
    seen = False
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "created":
            created, seen = value.strip(), True
        elif key == "engine":
            engine = value.strip()
        elif key == "version" and value.strip():
            version = value.strip()
        elif key == "file":
            index, _, path = value.partition(" ")
            if index.isdigit() and path:
                files[int(index)] = path
    ordered = tuple(files[i] for i in sorted(files))
    complete = seen and sorted(files) == list(range(len(files)))
    return Left(created, engine, version, ordered, complete)


def parse_left(out: str) -> Left | None:
    """Pure parser of :func:`left_probe`'s output: None when no copy is there."""
    lines = out.splitlines()
    if _PRESENT not in (line.strip() for line in lines):
        return None
    return parse_manifest("\n".join(lines[[line.strip() for line in lines].index(_PRESENT) + 1:]))


def read_left(host: Host, conf: CaiConfig) -> Left | None:
    """The copy an interrupted run left on the target, or None."""
    code, out, err = host.probe(left_probe(conf))
    if code != 0:
        raise OpsError(f"cannot look for a rollback copy in {backup_dir(conf)} on {host.name} "
                       f"({(err.strip() or f'exit {code}')[:200]})", "check that cai.state_dir is readable")
    return parse_left(out)


def left_message(where: str, created: str, conf: CaiConfig) -> OpsError:
    """The refusal of a new copy while one of an interrupted run exists (it is never replaced)."""
    when = created or "an unknown time"
    return OpsError(f"a rollback copy of an interrupted update exists on {where} (from {when}): "
                    "run inv update --resume",
                    f"it keeps the install before that update ({backup_dir(conf)}); --resume drops it when the "
                    "engine answers on what is installed now, or puts it back")


def incomplete_message(where: str, conf: CaiConfig) -> OpsError:
    """A copy without a readable manifest cannot be put back by itself."""
    return OpsError(f"the rollback copy in {backup_dir(conf)} on {where} has no readable manifest",
                    "compare it with the installed files, put back what is needed by hand, remove it, then rerun")


def left_findings(out: str, conf: CaiConfig, target: str, platform: str) -> list[Finding]:
    """Pure judge of :func:`left_probe`'s output for ``inv doctor``: ``update.rollback-left``."""
    left = parse_left(out)
    if left is None:
        return []
    when = left.created or "an unknown time"
    return [Finding("update.rollback-left", "warning", target,
                    f"a rollback copy of an interrupted update is left in {backup_dir(conf)} (from {when}): the "
                    "install it replaced was not confirmed working, and a new update refuses until it is settled",
                    "inv update --resume (drops the copy when the engine answers, otherwise puts it back)",
                    platform, {"created": left.created, "files": list(left.files)})]
