"""The ``cai-ops`` console script: the same namespace as ``inv`` through Invoke's Program."""

from __future__ import annotations

from invoke import Program

from ops import __version__


def main() -> None:
    """Run the containai-ops namespace."""
    from ops.tasks import ns

    Program(namespace=ns, version=__version__, name="cai-ops", binary="cai-ops").run()


if __name__ == "__main__":
    main()
