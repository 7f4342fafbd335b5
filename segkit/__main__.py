"""`python -m segkit`: the command line (segkit.flow.cli)."""

import sys

from segkit.flow.cli import main

if __name__ == "__main__":
    sys.exit(main())
