"""The documented Python API, `from executor.api import mine, infer`: written in executor/cli/api.py, beside the
command line whose names it takes."""
from executor.cli.api import infer, mine

__all__ = ["mine", "infer"]
