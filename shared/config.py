"""Configuration dataclasses: the model's shape (read from an HF `config.json`) and the engine's options.

Every dataclass validates itself in `__post_init__` and says what was wrong and what is allowed.
"""

from __future__ import annotations

import json
import numbers
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SEED_LIMIT = 2**64  # torch.Generator.manual_seed takes a 64-bit seed


def is_int(value) -> bool:
    """An integer, numpy's included, but not a bool (True is an int to Python, never a count to a user)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value, minimum: int, maximum: int | None = None, *, low: str | None = None,
              high: str | None = None, hint: str = "") -> int:
    """`value` as an int if it is an integer (not a bool, not a float) in [minimum, maximum), else a ValueError
    that names `name` and says what is allowed. `low`/`high` show the bounds by name (`max_model_len (256)`)."""
    if is_int(value) and value >= minimum and (maximum is None or value < maximum):
        return int(value)
    low = low or str(minimum)
    allowed = f"an integer >= {low}" if maximum is None else f"an integer in [{low}, {high or maximum})"
    raise ValueError(f"{name} must be {allowed}, got {value!r}{hint}")


@dataclass(frozen=True)
class ModelConfig:
    """The architecture hyper-parameters of a Qwen3 (or Qwen2) causal LM."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    max_position_embeddings: int
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    qk_norm: bool = True  # Qwen3 normalises q and k per head; Qwen2 does not
    attention_bias: bool = False  # Qwen2 has biases on q/k/v projections
    eos_token_ids: tuple[int, ...] = ()
    model_type: str = "qwen3"
    quant_method: str | None = None  # "gptq" for a checkpoint whose config.json has a quantization_config (M7)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
            check_int(name, getattr(self, name), 1)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")

    @classmethod
    def from_hf_dict(cls, cfg: dict, generation_cfg: dict | None = None) -> ModelConfig:
        """Parse an HF config dict; a missing or ill-typed field is a ValueError that names it."""
        model_type = cfg.get("model_type", "qwen3")
        if model_type not in ("qwen3", "qwen2"):
            raise ValueError(f"unsupported model_type {model_type!r}: FoloVLLM runs 'qwen3' and 'qwen2' models")
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if k not in cfg]
        if missing:
            raise ValueError(f"missing required key {missing[0]!r}" + (f" (and {missing[1:]})" if missing[1:] else ""))
        # transformers 5 nests rope_theta in rope_parameters; older configs keep it at the top level
        rope_theta = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 1_000_000.0))
        eos: list[int] = []
        for source in (generation_cfg or {}, cfg):
            ids = source.get("eos_token_id")
            for i in ids if isinstance(ids, list) else [ids] if ids is not None else []:
                if i not in eos:
                    eos.append(i)
        heads = check_int("num_attention_heads", cfg["num_attention_heads"], 1)
        quant = cfg.get("quantization_config")
        return cls(
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_hidden_layers=cfg["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=cfg.get("num_key_value_heads", heads),
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            max_position_embeddings=cfg.get("max_position_embeddings", 32768),
            rope_theta=float(rope_theta),
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=cfg.get("tie_word_embeddings", False),
            qk_norm=model_type == "qwen3",
            attention_bias=cfg.get("attention_bias", model_type == "qwen2"),
            eos_token_ids=tuple(eos),
            model_type=model_type,
            quant_method=quant.get("quant_method", "gptq") if isinstance(quant, dict) else None,
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> ModelConfig:
        """The one place a model directory's config.json (and generation_config.json) is read. Whatever is
        wrong with them is a `ModelFormatError` that names the file."""
        from shared.loader import ModelFormatError  # the loader imports this module

        config_file, gen_file = Path(path) / "config.json", Path(path) / "generation_config.json"
        cfg = _read_json_object(config_file)
        gen = _read_json_object(gen_file) if gen_file.exists() else None
        if "quantization_config" not in cfg and (Path(path) / "quantize_config.json").is_file():
            cfg = {**cfg, "quantization_config": {"quant_method": "gptq"}}  # AutoGPTQ kept it in its own file
        try:
            return cls.from_hf_dict(cfg, gen)
        except (ValueError, TypeError, ArithmeticError) as err:  # an ill-typed value can fail as TypeError
            raise ModelFormatError(f"{config_file}: {err}") from None

    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def num_parameters(self) -> int:
        """Parameter count computed from the shape alone (a tied lm_head is counted once)."""
        h, kv = self.hidden_size, self.kv_size
        attn = h * self.q_size + 2 * h * kv + self.q_size * h
        if self.attention_bias:
            attn += self.q_size + 2 * kv
        if self.qk_norm:
            attn += 2 * self.head_dim
        layer = attn + 3 * h * self.intermediate_size + 2 * h
        embed = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return embed + self.num_hidden_layers * layer + h

    def kv_bytes_per_token(self, dtype: torch.dtype) -> int:
        """Bytes of K and V cache one token occupies across all layers."""
        return 2 * self.num_hidden_layers * self.kv_size * torch.finfo(dtype).bits // 8


def _read_json_object(file: Path) -> dict:
    from shared.loader import ModelFormatError

    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as err:
        raise ModelFormatError(f"{file}: cannot be read: {err.strerror or err}") from None
    except ValueError as err:  # JSONDecodeError, or bytes that are not UTF-8
        raise ModelFormatError(f"{file}: not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ModelFormatError(f"{file}: expected a JSON object, got a {type(data).__name__}")
    return data


# Shapes by name (gpt-fast's `from_name`): the real Qwen3-0.6B and a small test shape, for random-weight checks.
PRESETS: dict[str, dict] = {
    "qwen3-0.6b": dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                       max_position_embeddings=40960, rope_theta=1_000_000.0, tie_word_embeddings=True),
    "qwen3-test": dict(vocab_size=512, hidden_size=96, intermediate_size=160, num_hidden_layers=3,
                       num_attention_heads=6, num_key_value_heads=2, head_dim=32,
                       max_position_embeddings=2048, rope_theta=10_000.0, tie_word_embeddings=False),
}


def preset_hf_config(name: str, **overrides):
    """A `transformers.Qwen3Config` for a preset shape (used to build random-weight checkpoints)."""
    from transformers import Qwen3Config

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return Qwen3Config(**{**PRESETS[name], **overrides})


@dataclass
class EngineConfig:
    """Options every engine takes: `LLM(model=..., device=..., dtype=..., **options)`."""

    model: str | os.PathLike = "tiny-qwen3"  # bundled name, local directory or hub id
    device: str = "auto"  # "auto" picks cuda when available, else cpu
    dtype: str = "auto"  # "auto": float32 on cpu, bfloat16 on cuda
    max_model_len: int | None = None  # default: the model's max_position_embeddings
    seed: int = 0  # seeds the engine's generator, used by requests without their own seed
    num_threads: int | None = None  # torch's CPU threads; default: default_num_threads()

    def __post_init__(self) -> None:
        if not isinstance(self.model, str | os.PathLike):
            raise ValueError(f"model must be a string or a path (bundled name, directory or hub id), got {self.model!r}")
        self.model = os.fspath(self.model)
        if not isinstance(self.device, str):
            raise ValueError(f"device must be a string: 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        if not re.fullmatch(r"cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"device {self.device!r} was asked for but CUDA is not available; use device='cpu'")
        if not isinstance(self.dtype, str):
            raise ValueError(f"dtype must be a string, one of {['auto', *DTYPES]}, got {self.dtype!r}")
        if self.dtype == "auto":
            self.dtype = "bfloat16" if self.device.startswith("cuda") else "float32"
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {['auto', *DTYPES]}, got {self.dtype!r}")
        if self.max_model_len is not None:
            self.max_model_len = check_int("max_model_len", self.max_model_len, 2)
        self.seed = check_int("seed", self.seed, 0, SEED_LIMIT, high="2**64")
        self.num_threads = default_num_threads() if self.num_threads is None else check_int("num_threads", self.num_threads, 1)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def default_num_threads() -> int:
    """Torch CPU threads when none are asked for: OMP_NUM_THREADS if the user set it, else half the cores.

    torch's own default is one thread per core, and its threads wait for each other at every op: when
    anything else keeps a core busy, a step waits for the slowest thread. On 2 cores, 1 thread ran as fast
    as 2 on a quiet machine and 10-35x faster with one core busy (docs/benchmarks.md, "Threads")."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, (os.cpu_count() or 2) // 2)


SCHEDULING_POLICIES = ("fcfs", "lpm")  # first come first served; longest prefix match (M6, needs prefix caching)


@dataclass
class SchedulerConfig:
    """How much work one engine step may do (M2+). Passed as options: `LLM(max_num_seqs=32, ...)`."""

    max_num_seqs: int = 64  # sequences in one step's batch
    max_num_batched_tokens: int | None = None  # tokens in one step's batch; default: max(max_model_len, max_num_seqs)
    enable_chunked_prefill: bool = False  # (M5) a prompt may run over several steps, in chunks
    long_prefill_token_threshold: int = 0  # (M5) the most tokens one prompt's chunk may take in a step; 0: no cap
    scheduling_policy: str = "fcfs"  # (M6) waiting order: "fcfs", or "lpm" (longest cached prefix first)

    def resolve(self, max_model_len: int, chunked_default: int | None = None) -> SchedulerConfig:
        """Validate against the model's context and fill the defaults. With chunked prefill the budget defaults
        to `chunked_default` (M5 chooses it by measurement), else to what a whole prompt needs."""
        seqs = check_int("max_num_seqs", self.max_num_seqs, 1)
        if not isinstance(self.enable_chunked_prefill, bool):
            raise ValueError(f"enable_chunked_prefill must be True or False, got {self.enable_chunked_prefill!r}")
        cap = check_int("long_prefill_token_threshold", self.long_prefill_token_threshold, 0,
                        hint=" (0: no cap on one prompt's chunk)")
        if cap and not self.enable_chunked_prefill:
            raise ValueError(f"long_prefill_token_threshold={cap} caps a prompt's chunk, so it needs "
                             "enable_chunked_prefill=True")
        if self.scheduling_policy not in SCHEDULING_POLICIES:
            raise ValueError(f"scheduling_policy must be one of {', '.join(map(repr, SCHEDULING_POLICIES))}, "
                             f"got {self.scheduling_policy!r}")
        tokens = self.max_num_batched_tokens
        if tokens is None:  # enough for the longest prompt (or one chunk), and for every running sequence's decode
            chunked = self.enable_chunked_prefill and chunked_default
            tokens = max(chunked_default if chunked else max_model_len, seqs)
        if not self.enable_chunked_prefill:  # a prompt, or a preempted sequence being recomputed, runs in one step
            tokens = check_int("max_num_batched_tokens", tokens, max_model_len, low=f"max_model_len ({max_model_len})",
                               hint=": a whole prompt runs in one step unless chunked prefill (M5, "
                                    "enable_chunked_prefill=True) cuts it; lower max_model_len instead")
        tokens = check_int("max_num_batched_tokens", tokens, seqs, low=f"max_num_seqs ({seqs})",
                           hint=": every running sequence decodes one token per step")
        return replace(self, max_num_seqs=seqs, max_num_batched_tokens=tokens, long_prefill_token_threshold=cap)


# powers of two: the Triton kernel tiles a block with tl.arange; flash-attn's paged layout needs multiples of 256
BLOCK_SIZES = tuple(2**i for i in range(10))  # 1 ... 512


@dataclass
class CacheConfig:
    """How the paged KV cache (M3+) is cut: `block_size` token positions per block, and the memory budget.
    Passed as options: `LLM(block_size=16, kv_cache_memory_bytes=64 << 20, ...)`."""

    block_size: int = 16
    kv_cache_memory_bytes: int | None = None  # default: default_kv_cache_memory_bytes(device)
    enable_prefix_caching: bool = False  # (M6) keep full blocks findable by a hash of their prefix

    def __post_init__(self) -> None:
        if not is_int(self.block_size) or self.block_size not in BLOCK_SIZES:  # 16.0 == 16, so the type first
            raise ValueError(f"block_size must be an integer, one of {list(BLOCK_SIZES)}, got {self.block_size!r}")
        b = self.kv_cache_memory_bytes
        if b is not None and (not is_int(b) or b < 1):
            raise ValueError(f"kv_cache_memory_bytes must be a positive integer, got {b!r}")
        if not isinstance(self.enable_prefix_caching, bool):
            raise ValueError(f"enable_prefix_caching must be True or False, got {self.enable_prefix_caching!r}")


def default_kv_cache_memory_bytes(device: str, at_least: int = 0) -> int:
    """KV memory budget when none is given: 1 GiB on CPU, 80% of free memory on CUDA, and never less than
    `at_least` (an engine passes one full-length sequence, so any model runs with the defaults)."""
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return max(int(free * 0.8), at_least)
    return max(1 << 30, at_least)
