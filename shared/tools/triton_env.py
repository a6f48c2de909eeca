"""A pytest plugin, loaded before collection (`-p shared.tools.triton_env` in pyproject's addopts): without a GPU,
Triton kernels run in Triton's interpreter, so the default test command covers them on CPU.

`TRITON_INTERPRET=1` must be in the environment before `triton` is first imported, because triton's own
library functions (`tl.cdiv`, `tl.sum`, ...) are wrapped by `@triton.jit` at import time. Many test
modules pull triton in indirectly (importing a transformers model class does), so setting the flag in
the kernel's test module is too late once another module was collected first.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
