"""containai-ops: build-and-operations toolkit for ContainAI hosts."""

__version__ = "0.1.0"
