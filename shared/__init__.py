"""Everything that is not a milestone's lesson: the Qwen3 model, loading, tokenizer, sampler, data structures,
the generate front end and CLI, the benchmark harness, HF reference runs, and the bundled tiny model."""
