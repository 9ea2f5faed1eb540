"""python -m sweeps ...: the same command line as the `gensweep` console script (sweeps/cli.py)."""

import sys

from sweeps.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m sweeps"))
