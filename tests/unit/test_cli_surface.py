"""The command surface: what the installed ``cai-ops`` offers against ``inv`` from a checkout, and the
finding codes (a stable interface for ``--json`` readers) against their list in docs/findings.md."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "findings.md"
#: ``<area>.<condition>``: lower-case letters and digits, words of the condition joined by dashes.
CODE_RE = re.compile(r"^[a-z][a-z0-9]*\.[a-z0-9]+(?:-[a-z0-9]+)*$")
#: Any call to one of these names builds a finding: the code is its ``code=`` or first string argument.
FINDING_CALL = re.compile(r"(^|_)(f|finding)$|Finding$", re.IGNORECASE)


def _checkout_tasks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("checkout_tasks", ROOT / "tasks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_installed_namespace_has_no_lab() -> None:
    from ops.tasks import build_namespace

    ns = build_namespace()
    assert "lab" not in ns.collections
    assert not [name for name in ns.task_names if name.startswith("lab.")]
    assert {"doctor", "update", "repair"} <= set(ns.task_names)


def test_checkout_namespace_adds_the_dev_tasks_and_the_lab() -> None:
    ns = _checkout_tasks().ns
    names = set(ns.task_names)
    assert {"test", "lint", "test-in-lab", "lab.up", "lab.down", "lab.engine"} <= names
    product = set(__import__("ops.tasks", fromlist=["build_namespace"]).build_namespace().task_names)
    assert product <= names  # every product task too, under the same names


def test_console_script_runs_the_product_namespace() -> None:
    from ops import cli

    source = Path(cli.__file__).read_text()
    assert "from ops.tasks import ns" in source and "tasks.py" not in source


# --- finding codes ------------------------------------------------------------------------------------

def _call_name(node: ast.Call) -> str:
    func = node.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _as_pattern(node: ast.expr) -> str | None:
    """A code literal as a regex: a plain string, or an f-string whose fields become wildcards."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return re.escape(node.value)
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                parts.append(re.escape(value.value))
            else:
                parts.append("[a-z0-9-]+")
        return "".join(parts)
    return None


def codes_in_source(root: Path = ROOT / "ops") -> dict[str, str]:
    """Every finding code the package can emit, as a regex, mapped to where it is (``path:line``)."""
    found: dict[str, str] = {}
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and FINDING_CALL.search(_call_name(node))):
                continue
            candidates = [kw.value for kw in node.keywords if kw.arg == "code"] or list(node.args)
            for arg in candidates:
                pattern = _as_pattern(arg)
                if pattern is not None:
                    found.setdefault(pattern, f"{path.relative_to(root.parent)}:{node.lineno}")
                    break
    return found


def codes_in_doc(text: str | None = None) -> set[str]:
    """The codes of docs/findings.md: the first cell of each table row, in backquotes."""
    text = DOC.read_text() if text is None else text
    return {m.group(1) for m in re.finditer(r"^\|\s*`([^`]+)`\s*\|", text, re.MULTILINE)}


def test_the_scan_sees_every_kind_of_finding_call() -> None:
    found = codes_in_source()
    assert re.escape("platform.detected") in found  # _f(r, "code", ...) in ops/doctor.py
    assert re.escape("units.drift") in found  # Finding("code", ...) in ops/units.py
    assert re.escape("rootfs.tainted") in found  # Finding(code="code", ...) in ops/repair/taint.py
    assert re.escape("ownership.damaged") in found  # _finding("code", ...) in ops/repair/findings.py
    assert "[a-z0-9-]+" + re.escape(".outdated") in found  # _f(r, f"{code}.outdated", ...)


def test_every_finding_code_is_documented() -> None:
    documented = codes_in_doc()
    missing = [f"{pattern.replace(chr(92), '')} ({where})" for pattern, where in codes_in_source().items()
               if not any(re.fullmatch(pattern, code) for code in documented)]
    assert not missing, f"finding codes missing from docs/findings.md: {missing}"


def test_every_documented_code_exists() -> None:
    patterns = list(codes_in_source())
    stale = [code for code in codes_in_doc() if not any(re.fullmatch(p, code) for p in patterns)]
    assert not stale, f"docs/findings.md lists codes the package never emits: {stale}"


def test_codes_follow_the_convention() -> None:
    bad = [code for code in codes_in_doc() if not CODE_RE.match(code)]
    assert not bad, f"codes not in the form <area>.<condition-with-dashes>: {bad}"


def test_the_doc_check_fails_on_an_undocumented_code(tmp_path: Path) -> None:
    module = tmp_path / "ops" / "extra.py"
    module.parent.mkdir()
    module.write_text('def check(r):\n    return [_f(r, "widget.gone-missing", "error", "m", "h")]\n')
    found = codes_in_source(tmp_path / "ops")
    assert found == {re.escape("widget.gone-missing"): "ops/extra.py:2"}
    assert not any(re.fullmatch(p, c) for p in found for c in codes_in_doc())
