"""The rollback copy's scripts run by a real shell on this machine: a copy that exists is never replaced
by a new one (the backup refuses, and says since when), and the copy is put back from its own manifest."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ops.config import CaiConfig
from ops.targets import LocalContext
from ops.update import rollback as rb
from ops.update.hostio import Host

pytestmark = pytest.mark.integration


def test_a_left_copy_is_never_replaced_and_goes_back_from_its_manifest(tmp_path: Path) -> None:
    c = CaiConfig.from_mapping({"state_dir": str(tmp_path / "state"), "opt_dir": str(tmp_path / "opt")})
    host = Host(LocalContext(), "")
    unit = tmp_path / "etc" / "engine.service"
    new_file = tmp_path / "etc" / "guard.service"
    unit.parent.mkdir()
    unit.write_text("previous unit\n")
    (tmp_path / "opt" / "bin").mkdir(parents=True)
    os.symlink(str(tmp_path / "opt" / "docker" / "1.0" / "dockerd"), tmp_path / "opt" / "bin" / "dockerd")
    (tmp_path / "opt" / "VERSION").write_text("1.0\n")
    files = [str(unit), str(new_file)]
    try:
        host.sh(rb.backup_script(c, files, "2.0"))  # the first run's copy, before its first change
        unit.write_text("new unit\n")  # ... which it then replaced, and was killed
        new_file.write_text("new guard\n")
        (tmp_path / "opt" / "VERSION").write_text("2.0\n")
        kept = (tmp_path / "state" / "rollback" / "files" / "0").read_text()

        code, _out, err = host.run(rb.backup_script(c, files, "2.0"))  # a later run
        left = rb.read_left(host, c)
        assert left is not None and left.complete and left.files == tuple(files) and left.new_version == "2.0"
        assert code == rb.LEFT_STATUS and err.strip() == left.created, err
        assert (tmp_path / "state" / "rollback" / "files" / "0").read_text() == kept == "previous unit\n"

        host.sh(rb.restore_script(c, list(left.files), left.new_version))  # what --resume puts back
    finally:
        host.cleanup()
    assert unit.read_text() == "previous unit\n" and not new_file.exists()
    assert (tmp_path / "opt" / "VERSION").read_text() == "1.0\n"
