"""Pure parts of the repair: parsers, owner rules, the planner, platform messages."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ops.errors import ConfigError, OpsError
from ops.repair import core
from ops.repair.scope import (
    Owner,
    Volume,
    parse_id_output,
    parse_override,
    parse_passwd,
    parse_user_spec,
    passwd_gid_of_uid,
    tar_file_text,
    tar_member,
    valid_volume_name,
    volume_attrs_problem,
    volume_names,
    volume_path,
)
from ops.repair.taint import SudoOwner, parse_stat_owner, taint_finding
from ops.repair.walk import (
    NOBODY,
    REPAIRED,
    SKIP_CHANGED,
    SKIP_ERROR,
    SKIP_HARDLINK,
    SKIP_NO_LONGER,
    Example,
    WalkStats,
    _c_id,
    _merge,
    new_owner,
    parse_mnt_id,
    show_path,
)

pytestmark = pytest.mark.unit

PASSWD = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\nagent:x:1234:1235::/home/agent:/bin/sh\n"


@pytest.mark.parametrize(
    "name, ok",
    [("data", True), ("a.b_c-1", True), ("0abc", True), ("", False), (".hidden", False), ("../x", False),
     ("a/b", False), ("-x", False), ("a b", False), ("a\n", False), ("é", False)],
)
def test_volume_names(name: str, ok: bool) -> None:
    assert valid_volume_name(name) is ok


def test_volume_path_refuses_bad_names() -> None:
    assert volume_path("/var/lib/containai-docker", "v1") == "/var/lib/containai-docker/volumes/v1/_data"
    with pytest.raises(OpsError, match="not a plain name"):
        volume_path("/x", "../etc")


def test_volume_names_from_inspect() -> None:
    attrs = {"Mounts": [
        {"Type": "volume", "Name": "data", "Destination": "/data"},
        {"Type": "bind", "Source": "/home", "Destination": "/home"},
        {"Type": "volume", "Name": "cache"},
        {"Type": "tmpfs", "Destination": "/run"},
    ]}
    assert volume_names(attrs) == ["data", "cache"]
    assert volume_names({}) == []


@pytest.mark.parametrize(
    "spec, want",
    [("1234", (1234, None)), ("1234:1235", (1234, 1235)), ("agent", None), ("", None), ("0", None),
     ("0:0", None), ("1234:agent", None), ("root", None), (" 42 ", (42, None))],
)
def test_user_spec(spec: str, want: tuple[int, int | None] | None) -> None:
    assert parse_user_spec(spec) == want


def test_passwd() -> None:
    assert parse_passwd(PASSWD, "agent") == (1234, 1235)
    assert parse_passwd(PASSWD, "missing") is None
    assert parse_passwd("agent:x:abc:1::/:/bin/sh\n", "agent") is None
    assert passwd_gid_of_uid(PASSWD, 1234) == 1235
    assert passwd_gid_of_uid(PASSWD, 99) is None


def test_id_and_stat_output() -> None:
    assert parse_id_output("1000\n") == 1000
    assert parse_id_output("id: unknown user agent\n") is None
    assert parse_stat_owner("0:0\n") == (0, 0)
    assert parse_stat_owner("65534:65534") == (65534, 65534)
    assert parse_stat_owner("stat: can't stat") is None


def test_override() -> None:
    assert parse_override(None, None) is None
    assert parse_override("1000", "1001") == (1000, 1001)
    for uid, gid, text in [("5", None, "go together"), (None, "5", "go together"), ("x", "1", "whole number"),
                           ("-1", "1", "whole number"), ("65534", "1", "nobody")]:
        with pytest.raises(ConfigError, match=text):
            parse_override(uid, gid)


def _tar(name: str, data: bytes, uid: int = 0, gid: int = 0) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size, info.uid, info.gid = len(data), uid, gid
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_archive_parsing() -> None:
    assert tar_file_text(_tar("passwd", PASSWD.encode()), "passwd") == PASSWD
    assert tar_file_text(_tar("other", b"x"), "passwd") is None
    member = tar_member(_tar("sudo", b"\x7fELF", 65534, 65534), "sudo")
    assert member is not None and (member.uid, member.gid) == (65534, 65534)


def test_volume_attrs_problem() -> None:
    path = "/d/volumes/v/_data"
    assert volume_attrs_problem({"Driver": "local", "Options": None, "Mountpoint": path}, path) == ""
    assert "mount options" in volume_attrs_problem(
        {"Driver": "local", "Options": {"o": "bind", "device": "/etc", "type": "none"}}, path)
    assert "not a local volume" in volume_attrs_problem({"Driver": "nfs"}, path)
    assert "cai.data_root" in volume_attrs_problem({"Driver": "local", "Mountpoint": "/other/_data"}, path)


@given(st.integers(0, 2**32 - 2), st.integers(0, 2**32 - 2))
def test_only_nobody_parts_change(uid: int, gid: int) -> None:
    nu, ng = new_owner(uid, gid, 1000, 1001)
    assert nu == (1000 if uid == NOBODY else -1)
    assert ng == (1001 if gid == NOBODY else -1)


@given(st.binary(min_size=1, max_size=40))
def test_shown_paths_are_one_printable_line(raw: bytes) -> None:
    text = show_path(raw)
    assert "\n" not in text and "\r" not in text and text.isprintable()


def test_show_path_examples() -> None:
    assert show_path(b"a/new\nline") == "a/new\\nline"
    assert show_path(b"bad-\xff") == "bad-\\xff"
    assert show_path(b"") == "."


@pytest.mark.parametrize(
    "inside, visible, want",
    [(True, False, core.CONTAINER_MESSAGE), (True, True, ""), (False, False, ""), (False, True, "")],
)
def test_unsupported_message(inside: bool, visible: bool, want: str) -> None:
    """Only a container without the engine's data root is "not supported" (a Mac repairs through its VM)."""
    assert core.unsupported_message(inside, visible) == want


def _facts(name: str, *owners: tuple[str, Owner], problem: str = "") -> core.VolumeFacts:
    return core.VolumeFacts(Volume(name, tuple(c for c, _ in owners)), tuple(owners), problem)


def test_plan() -> None:
    a = Owner(1000, 1000, "id agent")
    b = Owner(1234, 1234, "Config.User")
    d = Owner(1000, 1000, "default", "container c: cannot tell")
    plans = core.plan([
        _facts("one", ("c1", a)),
        _facts("shared-same", ("c1", a), ("c2", Owner(1000, 1000, "passwd"))),
        _facts("shared-diff", ("c1", a), ("c3", b)),
        _facts("bind", ("c1", a), problem="local volume with mount options (bind or special mount)"),
        _facts("nobody", ("c4", Owner(65534, 65534, "id agent"))),
        _facts("fallback", ("c5", d)),
    ], "/root")
    by = {p.name: p for p in plans}
    assert by["one"].owner == a and by["one"].path == "/root/volumes/one/_data" and not by["one"].skip
    assert by["shared-same"].owner is not None
    assert by["shared-diff"].owner is None and "disagree" in by["shared-diff"].skip
    assert by["bind"].owner is None and "mount options" in by["bind"].skip
    assert by["nobody"].owner is None and "nobody" in by["nobody"].skip
    assert by["fallback"].owner == d and by["fallback"].warnings == ("container c: cannot tell",)


def test_taint_finding() -> None:
    assert not SudoOwner("c", 0, 0, "exec").tainted
    owner = SudoOwner("c", 65534, 65534, "archive")
    f = taint_finding(owner, "local", "linux")
    assert owner.tainted and f.code == "rootfs.tainted" and f.severity == "warning"
    assert "cai run --fresh" in f.hint and "never chown" in f.hint


def test_mount_id_from_fdinfo() -> None:
    assert parse_mnt_id(b"pos:\t0\nflags:\t02400000\nmnt_id:\t27\nino:\t2146673\n") == 27
    assert parse_mnt_id(b"pos:\t0\nflags:\t0100000\nmnt_id:\t1234") == 1234
    with pytest.raises(OSError, match="mnt_id"):
        parse_mnt_id(b"pos:\t0\nflags:\t02400000\n")


def test_ids_as_c_ints() -> None:
    assert [_c_id(v) for v in (-1, 0, 1000, 2**31 - 1, 2**31, 2**32 - 2)] == [-1, 0, 1000, 2**31 - 1, -(2**31), -2]


def test_a_hard_link_counted_by_two_workers_counts_once() -> None:
    total, seen = WalkStats(), dict[tuple[int, int], str]()
    one = WalkStats(scanned=10, damaged=2, repaired=2)
    two = WalkStats(scanned=5, damaged=2, repaired=1)
    two.skipped[SKIP_NO_LONGER] = 1
    _merge(total, seen, one, {(1, 7): REPAIRED}, 5)
    _merge(total, seen, two, {(1, 7): SKIP_NO_LONGER, (1, 8): REPAIRED}, 5)
    assert (total.scanned, total.damaged, total.repaired) == (15, 3, 3)
    assert +total.skipped == {SKIP_HARDLINK: 1}


def _result(owner: Owner | None, stats: WalkStats | None, error: str = "",
            skipped_reason: str = "") -> core.VolumeResult:
    plan = core.VolumePlan("v", ("c",), "/d/volumes/v/_data", owner, "" if owner else "why")
    return core.VolumeResult(plan, stats, error, False, skipped_reason)


def test_damage_left_is_a_failure() -> None:
    a = Owner(1000, 1000, "id agent")
    assert not _result(a, WalkStats(damaged=3, repaired=3)).failed
    changed, errored = WalkStats(), WalkStats()
    changed.skipped[SKIP_CHANGED] = 1
    errored.skipped[SKIP_ERROR] = 1
    assert _result(a, changed).failed and _result(a, errored).failed
    assert _result(None, None).failed, "a skipped volume is damage that may remain"
    assert _result(a, None, skipped_reason="its _data is a mount point").failed
    assert _result(a, None, error="walk failed: x").failed


# --- the engine host's side and its answer -------------------------------------------------------------

def test_a_failed_archive_request_is_cannot_tell_not_clean() -> None:
    """The taint check's archive request failing (engine error, broken connection) is a visible
    ``rootfs.not-checked`` warning, never a silent "not tainted"."""
    from types import SimpleNamespace

    from ops.repair.taint import SudoUnknown, sudo_owner, taint_findings

    def refused(*_args: object, **_kwargs: object) -> None:
        raise ConnectionError("Connection aborted.\nmore")

    api = SimpleNamespace(base_url="http+docker://localhost", api_version="1.41", get=refused)
    engine: Any = SimpleNamespace(client=SimpleNamespace(api=api))
    box: Any = SimpleNamespace(name="box", id="abc123")
    assert sudo_owner(engine, box) == SudoUnknown("box", "Connection aborted.")
    found = taint_findings(engine, [box], "lima:vm", "macos")
    assert [(f.code, f.severity, f.target) for f in found] == [("rootfs.not-checked", "warning", "lima:vm")]
    assert "cannot tell" in found[0].message and found[0].data == {"container": "box",
                                                                   "reason": "Connection aborted."}


@given(st.lists(st.binary(min_size=1, max_size=20), max_size=4), st.integers(0, 10**6), st.booleans())
def test_walk_stats_survive_the_answer(paths: list[bytes], scanned: int, truncated: bool) -> None:
    import json

    from ops.repair import onhost

    stats = WalkStats(scanned=scanned, damaged=len(paths), repaired=len(paths), truncated=truncated,
                      seconds=1.5, workers=3, errors=["a\\nb: Permission denied"],
                      examples=[Example(p, "file", 65534, 7) for p in paths])
    stats.skipped[SKIP_CHANGED] = 2
    back = onhost.stats_from_dict(json.loads(json.dumps(onhost.stats_to_dict(stats))))
    assert back == stats


AGENT = Owner(1000, 1000, "id agent")


def _plan(name: str, owner: Owner | None = AGENT) -> core.VolumePlan:
    return core.VolumePlan(name, ("c",), f"/d/volumes/{name}/_data", owner, "" if owner else "disagree")


def test_results_from_the_answer() -> None:
    from ops.repair import onhost

    plans = [_plan("a"), _plan("b"), _plan("c"), _plan("s", None), _plan("lost")]
    request = core.request(plans, "/d", dry_run=True, workers=None)
    assert request["apply"] is False and request["strict"] is True and request["workers"] is None
    assert [v["name"] for v in request["volumes"]] == ["a", "b", "c", "lost"]  # skipped plans stay here
    answer = {"protocol": 1, "volumes": [
        {"name": "a", "stats": onhost.stats_to_dict(WalkStats(scanned=4, damaged=1, repaired=1))},
        {"name": "b", "refused": "/d/volumes/b/_data is a mount point", "kind": "mounted"},
        {"name": "c", "error": "walk failed: Input/output error"}]}
    got = {r.plan.name: r for r in core.results(plans, answer, True)}
    assert got["a"].stats is not None and got["a"].stats.repaired == 1 and not got["a"].failed
    assert got["b"].skipped_reason.endswith("mount point") and got["b"].failed
    assert got["c"].error == "walk failed: Input/output error" and got["c"].failed
    assert got["s"].skipped_reason == "disagree" and got["lost"].failed


@pytest.mark.parametrize("kind, error, code", [("unsafe", "UnsafeVolumeError", 1), ("not-found", "NotFoundError", 1),
                                              ("not-root", "RefusedError", 1), ("denied", "OpsError", 1)])
def test_a_refused_answer_raises_its_typed_error(kind: str, error: str, code: int) -> None:
    answer = {"protocol": 1, "error": {"kind": kind, "message": "/d/volumes/x is a symlink", "hint": "h"}}
    with pytest.raises(OpsError) as caught:
        core.results([_plan("x")], answer, False, "lima:vm")
    assert type(caught.value).__name__ == error and caught.value.exit_code == code
    assert caught.value.line() == "lima:vm: /d/volumes/x is a symlink: h"


def test_remote_parsers() -> None:
    from ops.repair import remote

    assert remote.parse_answer('motd\n@@CAI-REPAIR {"protocol": 1, "volumes": []}\n') == {"protocol": 1,
                                                                                          "volumes": []}
    assert remote.parse_answer("Traceback...\n") is None and remote.parse_answer("@@CAI-REPAIR {bad") is None
    assert remote.parse_access("0\nsudo-ok\npython3=/usr/bin/python3\n") == (True, True, "/usr/bin/python3")
    assert remote.parse_access("1000\npython3=\n") == (False, False, "")


def test_the_shipped_walk_runs_under_a_bare_python3(tmp_path: Path) -> None:
    """The command a target runs: the walk's and the driver's source and the request in one command,
    under ``python3 -I`` (no site-packages, nothing of this package importable). A dry run counts; a
    volume path that is a symlink refuses everything."""
    import shutil
    import subprocess

    from ops.repair import remote

    python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    assert python, "python3 is needed on PATH"
    data = tmp_path / "volumes" / "v" / "_data"
    (data / "d").mkdir(parents=True)
    (data / "d" / "f").write_text("x")
    plans = [_plan("v", Owner(os.getuid(), os.getgid(), "test"))]
    env = {"PATH": os.path.dirname(python)}
    run = subprocess.run(["sh", "-c", remote.driver_command(core.request(plans, str(tmp_path), True, 2))],
                         capture_output=True, text=True, env=env, check=False)
    answer = remote.parse_answer(run.stdout)
    assert run.returncode == 0 and answer is not None, run.stderr
    (result,) = core.results(plans, answer, True)
    assert result.stats is not None and (result.stats.scanned, result.stats.damaged) == (3, 0)
    os.symlink(tmp_path / "elsewhere", tmp_path / "volumes" / "w")
    plans.append(_plan("w"))
    run = subprocess.run(["sh", "-c", remote.driver_command(core.request(plans, str(tmp_path), True, 1))],
                         capture_output=True, text=True, env=env, check=False)
    answer = remote.parse_answer(run.stdout)
    assert answer is not None and answer["error"]["kind"] == "unsafe", run.stderr
    with pytest.raises(OpsError, match="is a symlink"):
        core.results(plans, answer, True)


def test_a_targets_row_and_its_volumes_as_json() -> None:
    from ops.repair.run import Outcome, outcome_summary, volume_summary

    done = WalkStats(scanned=6, damaged=4, repaired=4, seconds=0.01234, workers=2)
    left = WalkStats(scanned=3, damaged=1, repaired=0)
    left.skipped[SKIP_ERROR] = 1
    results = [core.VolumeResult(_plan("a"), done, "", False), core.VolumeResult(_plan("b"), left, "", False),
               core.VolumeResult(_plan("s", None), None, "", False, "disagree")]
    outcome = Outcome(1, results, "lima:vm")
    assert outcome_summary(outcome, False) == "repaired 4 entries in 2 volume(s); damage may remain in b, s"
    assert outcome_summary(Outcome(0, results[:1]), True) == "would repair 4 entries in 1 volume(s)"
    assert volume_summary(results[0]) == {
        "volume": "a", "containers": ["c"], "owner": "1000:1000", "failed": False, "scanned": 6, "damaged": 4,
        "repaired": 4, "skipped_entries": {}, "errors": [], "seconds": 0.012, "workers": 2}
    assert volume_summary(results[2]) == {"volume": "s", "containers": ["c"], "owner": None, "failed": True,
                                          "skipped": "disagree"}


def test_progress_lines_reach_the_callbacks(tmp_path: Path) -> None:
    """A walk on a target reports its progress as it goes: the watcher reads the driver's lines from
    the growing output (here a real local run of the shipped command, through the Context)."""
    from ops.repair import remote
    from ops.targets import LocalContext
    from ops.update.hostio import Host

    seen: list[tuple[str, object]] = []
    watcher = remote.ProgressWatcher(lambda name: seen.append(("start", name)), lambda n: seen.append(("n", n)))
    assert watcher.submit("@@CAI-PROGRESS start a\n@@CAI-PROGRESS entries 8192\n@@CAI-PROGRESS entr") == []
    watcher.submit("@@CAI-PROGRESS start a\n@@CAI-PROGRESS entries 8192\n@@CAI-PROGRESS entries 16384\n")
    watcher.submit("other stream: no progress here\n")
    assert seen == [("start", "a"), ("n", 8192), ("n", 16384)]

    for i in range(3):
        data = tmp_path / "volumes" / f"v{i}" / "_data"
        data.mkdir(parents=True)
        (data / "f").write_text("x")
    plans = [_plan(f"v{i}", Owner(os.getuid(), os.getgid(), "test")) for i in range(3)]
    seen.clear()
    run = remote.runner(Host(LocalContext(), ""), "local", timeout=120)
    answer = run(core.request(plans, str(tmp_path), True, 1), lambda name: seen.append(("start", name)),
                 lambda n: seen.append(("n", n)))
    assert [r.stats.scanned for r in core.results(plans, answer, True) if r.stats] == [2, 2, 2]
    assert [s for s in seen if s[0] == "start"] == [("start", "v0"), ("start", "v1"), ("start", "v2")]
    assert seen[-1] == ("n", 2)
