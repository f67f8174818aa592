"""Installing the package: quiet (no warning from the build backend), the data folders inside it, and the
installed ``cai-ops`` offering the product only (no ``lab.*``)."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
#: A Python warning as the build backend prints it (``file:line: SomeWarning: text``); pip's own
#: ``WARNING:`` lines (index settings of the machine) are not the package's.
BACKEND_WARNING = re.compile(r"\w*Warning\b(?!:? *Location)")


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    """This venv's pip (new enough to show the build backend's warnings)."""
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=600)


def backend_warnings(output: str) -> list[str]:
    return [line.strip() for line in output.splitlines() if BACKEND_WARNING.search(line)]


def test_editable_install_prints_no_warning(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    result = pip("--python", str(venv / "bin" / "python"), "install", "--no-deps", "-e", str(ROOT))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert not backend_warnings(result.stdout + result.stderr), result.stdout + result.stderr


def test_wheel_is_quiet_and_carries_the_data(tmp_path: Path) -> None:
    result = pip("wheel", "--no-deps", "--wheel-dir", str(tmp_path), str(ROOT))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert not backend_warnings(result.stdout + result.stderr), result.stdout + result.stderr
    (wheel,) = tmp_path.glob("containai_ops-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = {f"ops/systemd/{p.name}" for p in (ROOT / "systemd").glob("*.in")}
    pins = {f"ops/pins/{p.name}" for p in (ROOT / "packaging").glob("*.toml")}
    recipe = {f"ops/lab/{p.relative_to(ROOT / 'ops' / 'lab')}" for p in (ROOT / "ops" / "lab" / "recipe").rglob("*")
              if p.is_file()}
    assert templates and pins and recipe
    assert templates | pins | recipe <= names, sorted((templates | pins | recipe) - names)
    assert not [n for n in names if n.startswith(("packaging/", "systemd/", "tests/", "bench/")) or "__pycache__" in n]


def test_the_installed_console_script_has_no_lab() -> None:
    script = Path(sys.executable).parent / "cai-ops"
    assert script.is_file(), "cai-ops is not installed in this venv: run ./bootstrap.sh deps"
    result = subprocess.run([str(script), "--list"], capture_output=True, text=True, cwd="/",
                            stdin=subprocess.DEVNULL, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "doctor" in result.stdout and "update" in result.stdout and "pkg.verify-deb" in result.stdout
    assert "lab." not in result.stdout and "test-in-lab" not in result.stdout
    checkout = subprocess.run([sys.executable, "-m", "invoke", "--list"], capture_output=True, text=True,
                              cwd=ROOT, stdin=subprocess.DEVNULL, timeout=120)
    assert checkout.returncode == 0, checkout.stderr
    assert "lab.up" in checkout.stdout and "test-in-lab" in checkout.stdout
