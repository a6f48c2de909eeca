import sys

from m7_gptq import LLM
from shared.cli import main

sys.exit(main(LLM, "m7_gptq"))
