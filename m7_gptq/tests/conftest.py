import pytest

from shared.tools.testing import _deterministic, random_model  # noqa: F401


def quantize_tiny(out, *flags: str) -> str:
    """Quantize the bundled model into `out` with a small calibration set (a few seconds); returns the path."""
    from m7_gptq.quantize import main

    assert main(["--out", str(out), "--num-samples", "8", "--seq-len", "128", "--threads", "1", *flags]) == 0
    return str(out)


@pytest.fixture(scope="session")
def gptq_dir(tmp_path_factory) -> str:
    """tiny-qwen3 as a GPTQ checkpoint: 4-bit, group size 128, symmetric, no act-order (GPTQModel's defaults)."""
    return quantize_tiny(tmp_path_factory.mktemp("gptq") / "g128")


@pytest.fixture(scope="session")
def act_order_dir(tmp_path_factory) -> str:
    """tiny-qwen3 as a GPTQ checkpoint with act-order, group size 32, asymmetric: scattered groups, real zeros."""
    return quantize_tiny(tmp_path_factory.mktemp("gptq") / "g32-act", "--group-size", "32", "--desc-act", "--no-sym")
