"""A pytest plugin, loaded before collection (`-p shared.tools.pytest_env` in pyproject's addopts): the test
environment every run gets, whatever imports first.

- **Torch threads.** The engines set torch's CPU threads to `default_num_threads()` (half the cores: 1 on
  the project's 2-core machines; docs/benchmarks.md, "Threads"); the HuggingFace reference runs and any
  subprocess (the CLI tests, the notebooks' kernels) get the same through OMP_NUM_THREADS.
- **Triton's interpreter.** Without a GPU, Triton kernels run in Triton's interpreter, so the default test
  command covers them on CPU. `TRITON_INTERPRET=1` must be in the environment before `triton` is first
  imported, because triton's own library functions (`tl.cdiv`, `tl.sum`, ...) are wrapped by `@triton.jit`
  at import time. Many test modules pull triton in indirectly (importing a transformers model class does),
  so setting the flag in the kernel's test module is too late once another module was collected first.
"""

import os

import torch

from shared.config import default_num_threads

os.environ.setdefault("OMP_NUM_THREADS", str(default_num_threads()))
torch.set_num_threads(default_num_threads())
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
