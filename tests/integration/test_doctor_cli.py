"""``inv doctor`` as users type it, through the real CLI on the real lab engine: ``--repair`` without a
scope, a Mac repairing through its Lima VM, ``--repair`` and ``--fix`` over several targets, and
``--json --fix`` printing one JSON document.

Each test uses its own management label, so "all managed containers" only ever means this test's.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _cli import inv

pytestmark = pytest.mark.integration

DATA_ROOT = "/var/lib/cai-lab/docker"
NOBODY = 65534


@dataclass
class Damaged:
    """Two managed containers, each with a volume holding one file owned by nobody:nogroup."""

    env: dict[str, str]
    names: tuple[str, str]
    files: tuple[Path, Path]


@pytest.fixture
def damaged(lab_engine: str, tiny_image: str) -> Iterator[Damaged]:
    import docker

    client = docker.DockerClient(base_url=lab_engine)
    tag = uuid.uuid4().hex[:8]
    key = f"containai.managed-t{tag}"
    names = (f"t-doctor-{tag}-a", f"t-doctor-{tag}-b")
    made, files = [], []
    try:
        for name in names:
            vol = f"{name}-data"
            made.append(client.containers.run(tiny_image, ["sleep", "600"], name=name, labels={key: "true"},
                                              network_mode="none", detach=True,
                                              volumes={vol: {"bind": "/data", "mode": "rw"}}))
            path = Path(DATA_ROOT) / "volumes" / vol / "_data" / "file"
            path.write_text("x")
            os.chown(path, NOBODY, NOBODY)
            files.append(path)
        env = {"INVOKE_CAI_DOCKER_HOST": lab_engine, "INVOKE_CAI_DATA_ROOT": DATA_ROOT,
               "INVOKE_CAI_LABEL": f"{key}=true", "COLUMNS": "200"}
        yield Damaged(env, names, (files[0], files[1]))
    finally:
        for c in made:
            c.remove(force=True, v=True)
        client.close()


def owner(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid


def one_line_error(result: Any) -> str:
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return str(lines[0])


def test_repair_without_a_scope_means_all_managed_containers(damaged: Damaged) -> None:
    """The spec's quick check, ``doctor --repair --dry-run``, previews every managed container (it
    exited 1 with "give exactly one of --all or --container NAME" before); ``--container`` narrows it."""
    preview = inv("doctor", "--repair", "--dry-run", env=damaged.env)
    assert preview.returncode == 0, preview.stdout + preview.stderr
    for name in damaged.names:
        assert f"volume {name}-data ({name}): would repair 1" in preview.stdout
    narrowed = inv("doctor", "--repair", "--dry-run", "--container", damaged.names[1], env=damaged.env)
    assert narrowed.returncode == 0, narrowed.stderr
    assert damaged.names[1] in narrowed.stdout and f"volume {damaged.names[0]}-data" not in narrowed.stdout
    assert all(owner(f) == (NOBODY, NOBODY) for f in damaged.files)  # a preview changes nothing

    repaired = inv("doctor", "--repair", env=damaged.env)
    assert repaired.returncode == 0, repaired.stdout + repaired.stderr
    assert all(owner(f) == (1000, 1000) for f in damaged.files)


def test_a_mac_repairs_through_its_lima_vm(tmp_path: Path) -> None:
    """On macOS ``doctor --repair`` repairs inside the Lima VM ``cai.lima_vm`` (it said "not supported"
    before): bad flags are one line first, then a VM that is not there is named with the way out."""
    lima = tmp_path / "lima"
    lima.mkdir()
    env = {"INVOKE_CAI_PLATFORM": "macos", "INVOKE_CAI_LIMA_HOME": str(lima)}
    for args, first in [([], "error: Lima VM 'containai-docker' not found"),
                        (["--dry-run"], "error: Lima VM 'containai-docker' not found"),
                        (["--all", "--container", "x"], "error: give exactly one of --all or --container NAME")]:
        result = inv("doctor", "--repair", *args, env=env)
        assert result.returncode == 1 and result.stdout == "", result.stdout + result.stderr
        assert one_line_error(result).startswith(first), result.stderr


def test_repair_and_fix_on_a_fleet_with_an_unreachable_target(damaged: Damaged) -> None:
    """``doctor --repair`` and ``--fix`` act on every target (they refused any non-local one before): the
    local host is repaired, an unreachable target is its own failed result, exit 1."""
    target = "ssh://agent@127.0.0.1:1"
    result = inv("doctor", "--repair", "--dry-run", "--json", "--target", "local", "--target", target,
                 env=damaged.env)
    assert result.returncode == 1, result.stdout + result.stderr
    doc = json.loads(result.stdout)
    by = {t["target"]: t for t in doc["targets"]}
    assert by["local"]["exit_code"] == 0 and by[target]["exit_code"] == 1, doc
    assert [v["repaired"] for v in by["local"]["detail"]["volumes"]] == [1, 1]
    assert f"[{target}] error: cannot reach" in result.stderr and "Traceback" not in result.stderr
    assert all(owner(f) == (NOBODY, NOBODY) for f in damaged.files)  # a dry run

    fixed = inv("doctor", "--fix", "--json", "--target", "local", "--target", target, env=damaged.env)
    assert fixed.returncode == 1, fixed.stderr  # the unreachable target is an error finding
    fix = json.loads(fixed.stdout)["fix"]
    assert fix["targets"] == ["local"] and fix["exit_code"] == 0, fix
    assert all(owner(f) == (1000, 1000) for f in damaged.files)


def test_json_fix_prints_one_json_document(damaged: Damaged) -> None:
    """``doctor --json --fix``: the repair's lines go inside the document (before, they followed the JSON
    on stdout); the findings are the state after the fix."""
    result = inv("doctor", "--json", "--fix", env=damaged.env)
    assert "Traceback" not in result.stderr
    doc = json.loads(result.stdout)  # the whole of stdout is one document
    fix = doc["fix"]
    assert fix["ran"] is True and fix["fixable"] == ["ownership.damaged"] and fix["exit_code"] == 0
    for name in damaged.names:
        assert any(line.startswith(f"volume {name}-data ({name}): scanned") for line in fix["output"])
    assert not any(f["code"] == "ownership.damaged" for f in doc["findings"])
    assert all(owner(f) == (1000, 1000) for f in damaged.files)

    again = json.loads(inv("doctor", "--json", "--fix", env=damaged.env).stdout)
    assert again["fix"] == {"fixable": [], "dry_run": False, "ran": False, "exit_code": 0, "output": [],
                            "error": None, "targets": [], "ssh": []}
