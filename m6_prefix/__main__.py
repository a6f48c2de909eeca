import sys

from m6_prefix import LLM
from shared.cli import main

sys.exit(main(LLM, "m6_prefix"))
