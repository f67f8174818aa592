"""Doctor reads the installed units as the login user: a file it cannot read is said to be unreadable,
never compared as if it were missing (which reported drift that was not there and would render a
daemon.json without the host's own keys). Real files, a real shell, a real unprivileged user."""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ops import units
from ops.config import CaiConfig
from ops.errors import OpsError
from ops.targets import LocalContext

pytestmark = pytest.mark.integration


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can search (pytest's own tmp_path sits below a 0700 directory)."""
    path = Path(tempfile.mkdtemp(prefix="cai-units-read-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class AsNobody(LocalContext):
    """The local host, every command run as uid/gid 65534 (a login user without root)."""

    def run(self, command: str, **kwargs: Any) -> Any:
        wrapped = "setpriv --reuid=65534 --regid=65534 --clear-groups sh -c " + shlex.quote(command)
        return super().run(wrapped, **kwargs)


def test_a_file_the_user_cannot_read_is_unreadable_not_missing(open_dir: Path) -> None:
    tmp_path = open_dir
    assert os.geteuid() == 0, "the integration tier runs as root (bootstrap.sh)"
    tmp_path.chmod(0o755)
    secret = tmp_path / "daemon.json"
    secret.write_text('{"bridge": "cai0"}\n')
    secret.chmod(0o600)
    shown = tmp_path / "unit.service"
    shown.write_text("[Unit]\n")
    shown.chmod(0o644)
    missing = tmp_path / "missing.service"
    installed, unreadable = units.read_installed(AsNobody(), [str(secret), str(shown), str(missing)])
    assert unreadable == [str(secret)]
    assert installed == {str(secret): None, str(shown): "[Unit]\n", str(missing): None}
    # as root the same file reads
    installed_root, unreadable_root = units.read_installed(LocalContext(), [str(secret)])
    assert unreadable_root == [] and installed_root[str(secret)] == '{"bridge": "cai0"}\n'


def test_drift_refuses_to_compare_what_it_cannot_read(open_dir: Path) -> None:
    tmp_path = open_dir
    tmp_path.chmod(0o755)
    private = tmp_path / "private"
    unit_dir = private / "units"
    unit_dir.mkdir(parents=True)
    private.chmod(0o700)  # root's, not searchable by the login user
    conf = CaiConfig.from_mapping({"unit_dir": str(unit_dir), "opt_dir": str(tmp_path / "opt")})
    rendered = units.render(conf)
    units.write_out(rendered, unit_dir)  # installed exactly as rendered: no drift for root
    as_root = [d for d in units.drift_on(LocalContext(), conf)[1] if d.path.startswith(str(unit_dir))]
    assert as_root == []
    with pytest.raises(OpsError) as err:
        units.drift_on(AsNobody(), conf)
    assert "cannot read" in err.value.message and str(unit_dir) in err.value.message
    assert "root" in err.value.hint
