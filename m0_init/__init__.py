"""M0 — initialisation: configuration, checkpoint loading and the data structures every engine uses.

The code of this stage lives in `shared/` (it never changes between milestones); this package re-exports
it under one roof and adds `python -m m0_init`, which prints what a checkpoint is made of.
"""

from m0_init.summary import ModelSummary, summarize, summary_table
from shared.config import EngineConfig, ModelConfig
from shared.loader import ModelFormatError, ModelNotFoundError, load_model, resolve_model
from shared.outputs import CompletionOutput, RequestMetrics, RequestOutput
from shared.request import Request, Sequence, SequenceStatus
from shared.sampling import SamplingParams

__all__ = [
    "CompletionOutput", "EngineConfig", "ModelConfig", "ModelFormatError", "ModelNotFoundError", "ModelSummary", "Request",
    "RequestMetrics", "RequestOutput", "SamplingParams", "Sequence", "SequenceStatus", "load_model",
    "resolve_model", "summarize", "summary_table",
]
