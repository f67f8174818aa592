"""Keep what an update replaces until the new engine answers, and put it back when it does not.

Before the first change, the update copies onto the target (``<cai.state_dir>/rollback/``, as root,
synced): every file it will write (units, daemon.json, the stop-hook script) or the fact that it did
not exist, the links of ``<opt_dir>/bin`` and ``<opt_dir>/VERSION``, and whether the new bundle's
version directory already existed. ``restore`` puts all of it back the same way the update installs
(a temporary name beside the target, then a rename), removes what did not exist before, and reloads
systemd. The copy is dropped once the new engine answered a ping.

The Sysbox package is not part of it: apt cannot go back to a package it no longer has, and an older
Sysbox under a newer engine is what the host ran before anyway.
"""

from __future__ import annotations

import shlex

from ops.config import CaiConfig
from ops.update.hostio import Host


def backup_dir(conf: CaiConfig) -> str:
    """Where the copy lives on the target."""
    return f"{conf.state_dir.rstrip('/')}/rollback"


def backup_script(conf: CaiConfig, files: list[str], new_version: str | None) -> str:
    """Shell that copies what the update will replace into :func:`backup_dir` (see the module)."""
    q = shlex.quote
    b = backup_dir(conf)
    opt = conf.opt_dir.rstrip("/")
    lines = ["set -e", f"b={q(b)}; opt={q(opt)}", 'rm -rf "$b.new"; mkdir -p "$b.new/files"']
    for i, path in enumerate(files):
        lines.append(f"if [ -e {q(path)} ] || [ -L {q(path)} ]; then cp -a {q(path)} \"$b.new/files/{i}\"; "
                     f"else : > \"$b.new/files/{i}.absent\"; fi")
    lines += [
        'if [ -d "$opt/bin" ]; then cp -a "$opt/bin" "$b.new/bin"; else : > "$b.new/bin.absent"; fi',
        'if [ -e "$opt/VERSION" ]; then cp -a "$opt/VERSION" "$b.new/VERSION"; else : > "$b.new/VERSION.absent"; fi',
    ]
    if new_version:
        lines.append(f"if [ ! -e \"$opt/docker/\"{q(new_version)} ]; then : > \"$b.new/version-dir.created\"; fi")
    lines += ['sync "$b.new" "$b.new/files"', 'rm -rf "$b"; mv "$b.new" "$b"', f'sync {q(conf.state_dir)}']
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
