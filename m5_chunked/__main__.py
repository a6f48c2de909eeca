import sys

from m5_chunked import LLM
from shared.cli import main

sys.exit(main(LLM, "m5_chunked"))
