"""`python -m shared.tools.bench ...`: runs the command line in shared/tools/bench/cli.py."""

import sys

from shared.tools.bench.cli import main

if __name__ == "__main__":
    main(sys.argv[1:])
