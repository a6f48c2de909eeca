"""M7's quantization settings: what `quantization_config` in a GPTQ checkpoint's config.json says, validated.

The keys are the ones GPTQModel and AutoGPTQ write and vLLM and transformers read:

    {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": false, "sym": true,
     "checkpoint_format": "gptq", ...}

`checkpoint_format` "gptq" is the historical v1 layout, where each stored zero point is the true zero
minus one (see packing.py); "gptq_v2" stores the true zero. Older AutoGPTQ checkpoints keep the same keys
in a separate `quantize_config.json`, which is read when config.json has none.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from shared.config import is_int

BITS = (2, 4, 8)  # widths that divide a 32-bit word; 3-bit codes straddle words and are not supported
GROUP_SIZES = (-1, 32, 64, 128, 256)  # -1: one group spans the whole input dimension
CHECKPOINT_FORMATS = {"gptq": 1, "gptq_v2": 0}  # format -> what is added to a stored zero to get the true zero


@dataclass(frozen=True)
class GPTQConfig:
    """How a checkpoint's linear layers are quantized. `damp_percent` matters only while quantizing."""

    bits: int = 4
    group_size: int = 128
    desc_act: bool = False  # act-order: columns quantized by decreasing Hessian diagonal; g_idx records groups
    sym: bool = True  # symmetric: every zero point is 2^(bits-1), only scales vary
    damp_percent: float = 0.01  # lambda added to H's diagonal, as a fraction of its mean
    checkpoint_format: str = "gptq"

    def __post_init__(self) -> None:
        if not is_int(self.bits) or self.bits not in BITS:
            raise ValueError(f"bits must be one of {list(BITS)}, got {self.bits!r}")
        if not is_int(self.group_size) or self.group_size not in GROUP_SIZES:
            raise ValueError(f"group_size must be one of {list(GROUP_SIZES)} (-1: one group per row), got {self.group_size!r}")
        for name in ("desc_act", "sym"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.damp_percent, int | float) or not 0 < self.damp_percent < 1:
            raise ValueError(f"damp_percent must be a number in (0, 1), got {self.damp_percent!r}")
        if self.checkpoint_format not in CHECKPOINT_FORMATS:
            raise ValueError(f"checkpoint_format must be one of {list(CHECKPOINT_FORMATS)}, got {self.checkpoint_format!r}")

    @property
    def pack_factor(self) -> int:
        """Codes per int32 word."""
        return 32 // self.bits

    @property
    def zero_offset(self) -> int:
        """What is added to a stored zero point to get the true one: 1 in the v1 format, 0 in v2."""
        return CHECKPOINT_FORMATS[self.checkpoint_format]

    def group_len(self, in_features: int) -> int:
        return in_features if self.group_size == -1 else self.group_size

    def num_groups(self, in_features: int) -> int:
        return -(-in_features // self.group_len(in_features))

    def to_hf_dict(self) -> dict:
        """The `quantization_config` written into config.json (GPTQModel's keys; readers ignore extras)."""
        return {"quant_method": "gptq", **asdict(self), "static_groups": False, "true_sequential": True,
                "pack_dtype": "int32", "lm_head": False, "meta": {"quantizer": ["folovllm m7_gptq"]}}

    @classmethod
    def from_hf_dict(cls, cfg: dict) -> GPTQConfig:
        """Parse a `quantization_config`; anything this engine cannot run is a ValueError that says so."""
        method = cfg.get("quant_method", "gptq")
        if method != "gptq":
            raise ValueError(f"quant_method {method!r} is not supported: m7_gptq loads 'gptq' checkpoints")
        for key in ("bits", "group_size"):
            if key not in cfg:
                raise ValueError(f"quantization_config has no {key!r}")
        if cfg.get("lm_head"):
            raise ValueError("quantization_config has lm_head: true; m7_gptq keeps the lm_head in full precision")
        fmt = cfg.get("checkpoint_format", cfg.get("format", "gptq"))
        return cls(bits=cfg["bits"], group_size=cfg["group_size"], desc_act=cfg.get("desc_act", False),
                   sym=cfg.get("sym", True), damp_percent=cfg.get("damp_percent", 0.01), checkpoint_format=fmt)


def read_quant_config(path: str | Path) -> GPTQConfig | None:
    """The GPTQ settings of the model directory `path`, or None for a full-precision model. A malformed or
    unsupported `quantization_config` is a ModelFormatError that names the file."""
    from shared.loader import ModelFormatError

    path = Path(path)
    for file, key in ((path / "config.json", "quantization_config"), (path / "quantize_config.json", None)):
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ModelFormatError(f"{file}: not readable JSON: {err}") from None
        cfg = data.get(key) if key and isinstance(data, dict) else data
        if cfg is None:
            continue
        try:
            if not isinstance(cfg, dict):
                raise ValueError(f"expected a JSON object, got {type(cfg).__name__}")
            return GPTQConfig.from_hf_dict(cfg)
        except ValueError as err:
            raise ModelFormatError(f"{file}: {err}") from None
    return None
