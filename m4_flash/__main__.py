import sys

from m4_flash import LLM
from shared.cli import main

sys.exit(main(LLM, "m4_flash"))
