"""The engine milestones that exist, in order. Adding a milestone to the cross-milestone suite is one name here."""

import importlib

ENGINES = ["m1_basic", "m2_batching", "m3_paged", "m4_flash", "m5_chunked", "m6_prefix", "m7_gptq"]


def llm_class(name: str):
    return importlib.import_module(name).LLM
