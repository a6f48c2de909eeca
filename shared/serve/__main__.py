"""`python -m shared.serve`: see shared/serve/cli.py."""

import sys

from shared.serve.cli import main

sys.exit(main())
