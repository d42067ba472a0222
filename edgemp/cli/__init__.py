"""The `edgemp` command line: a thin layer over the Python API (edgemp.cli.app holds the group and the error
mapping; each module registers its commands on it)."""

from edgemp.cli import convert, device, sweep  # noqa: F401  (register their commands on `main`)
from edgemp.cli.app import EXIT_GATE_FAILED, EXIT_INTERRUPTED, EXIT_UNEXPECTED, main

__all__ = ["EXIT_GATE_FAILED", "EXIT_INTERRUPTED", "EXIT_UNEXPECTED", "main"]
