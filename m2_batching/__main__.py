import sys

from m2_batching import LLM
from shared.cli import main

sys.exit(main(LLM, "m2_batching"))
