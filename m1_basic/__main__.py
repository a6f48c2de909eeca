import sys

from m1_basic import LLM
from shared.cli import main

sys.exit(main(LLM, "m1_basic"))
