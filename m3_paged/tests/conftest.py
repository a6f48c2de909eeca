from shared.testing import _deterministic, random_model  # noqa: F401
