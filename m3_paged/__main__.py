import sys

from m3_paged import LLM
from shared.cli import main

sys.exit(main(LLM, "m3_paged"))
