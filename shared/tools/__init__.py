"""The tooling around the engines, kept apart from the runtime they import: the benchmark harness
(`python -m shared.tools.bench`), HuggingFace reference runs, training the bundled tiny model, the GPU
check, and the pytest helpers. No engine imports anything from here."""
