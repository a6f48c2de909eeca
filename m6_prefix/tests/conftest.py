from shared.tools.testing import _deterministic, random_model  # noqa: F401
