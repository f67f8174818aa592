"""containai-ops tasks: the product namespace (ops.tasks) plus developer tasks (test, lint, bench)."""

from __future__ import annotations

from typing import Any

from invoke import Collection, task

from ops.tasks import build_namespace


@task(
    iterable=["marker"],
    help={
        "marker": "run only tests with this marker: unit, integration or lab (repeatable)",
        "k": "pytest -k expression",
        "x": "stop at the first failure",
    },
)
def test(c: Any, marker: list[str] | None = None, k: str = "", x: bool = False) -> None:
    """Run the test suite (all tiers unless --marker is given)."""
    args = ["python", "-m", "pytest", "-q"]
    if marker:
        args += ["-m", " or ".join(marker)]
    if k:
        args += ["-k", k]
    if x:
        args.append("-x")
    c.run(" ".join(args), pty=False)


@task(help={})
def lint(c: Any) -> None:
    """Run ruff and mypy (the package, the tests and the bench scripts)."""
    from pathlib import Path

    scripts = sorted(str(p) for p in Path("bench").iterdir() if p.is_file())
    c.run("ruff check ops tests tasks.py " + " ".join(scripts))
    c.run("mypy")
    for script in scripts:  # extensionless scripts: one module each
        c.run(f"mypy {script}", env={"MYPYPATH": "tests/lab"})  # the lab helpers they use


ns: Collection = build_namespace()
ns.add_task(test)
ns.add_task(lint)
