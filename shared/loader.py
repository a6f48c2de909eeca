"""Find a model (bundled name, local directory or HF hub id) and load its safetensors weights by name.

Weight loading is kept apart from the model math (nanoGPT's habit): the model's parameter names equal
HuggingFace's, so a checkpoint loads as-is. Every broken file (corrupt JSON, a truncated safetensors file,
a missing, unexpected or mis-shaped tensor) is a `ModelFormatError` that names the file and what is wrong.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from shared.config import ModelConfig
from shared.model.layers import make_linear

ASSETS = Path(__file__).parent / "assets"
BUNDLED = {"tiny-qwen3": ASSETS / "tiny-qwen3"}
HF_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"]
DEFAULT_IGNORE = ("*.rotary_emb.inv_freq",)  # older HF checkpoints store RoPE's frequencies; the model computes them


class ModelNotFoundError(ValueError):
    """The model name resolves to nothing this machine has."""


class ModelFormatError(ValueError):
    """A model directory with a broken file (config.json, the weights index, a safetensors file, a tensor the
    model does not expect). The message names the file and what is wrong with it."""


def resolve_model(name: str | Path) -> Path:
    """Return the local directory that holds `name`: a bundled model, a directory, or a cached/downloaded hub id."""
    name = str(name)
    if not name.strip():
        raise ModelNotFoundError(f"model name is empty: give a bundled name ({', '.join(BUNDLED)}), a directory or a hub id")
    if name in BUNDLED:
        return BUNDLED[name]
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{name!r} is a path but holds no config.json: give an HF model directory")
        return path
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise ModelNotFoundError(
            f"unknown model {name!r}: it is not a bundled model ({', '.join(BUNDLED)}), not an existing "
            f"directory, and not a hub id of the form 'org/name' (for example Qwen/Qwen3-0.6B)"
        )
    from huggingface_hub import snapshot_download

    try:  # the HF cache first: works offline
        return Path(snapshot_download(name, allow_patterns=HF_FILES, local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(name, allow_patterns=HF_FILES))
    except Exception as err:
        raise ModelNotFoundError(
            f"model {name!r} is not in the HuggingFace cache and could not be downloaded "
            f"({type(err).__name__}). On a machine with network run `hf download {name}` (it fills "
            f"~/.cache/huggingface), or pass a local directory with --model /path/to/model, or use the "
            f"bundled 'tiny-qwen3'."
        ) from None


def checkpoint_files(path: Path) -> list[Path]:
    """The safetensors files of a model directory: the shards its index names, or every *.safetensors file."""
    index = path / "model.safetensors.index.json"
    if not index.exists():
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise ModelFormatError(f"{path}: no *.safetensors weights in the model directory")
        return files
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ModelFormatError(f"{index}: not a safetensors index with a 'weight_map' ({type(err).__name__}: {err})") from None
    for shard in shards:
        if not (path / shard).is_file():
            raise ModelFormatError(f"{index}: names the shard {shard!r}, which is not in {path}")
    return [path / s for s in shards]


@contextmanager
def open_checkpoint_file(file: Path) -> Iterator:
    """`safe_open(file)`; a file safetensors cannot read (while opening or reading a tensor) is a ModelFormatError."""
    try:
        with safe_open(str(file), framework="pt") as f:
            yield f
    except (SafetensorError, OSError) as err:
        raise ModelFormatError(f"{file}: not a readable safetensors file (truncated or corrupt): {err}") from None


def checkpoint_shapes(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype) read from the safetensors headers alone, without loading any tensor."""
    out = {}
    for file in checkpoint_files(path):
        with open_checkpoint_file(file) as f:
            for name in f.keys():
                sl = f.get_slice(name)
                out[name] = (tuple(sl.get_shape()), sl.get_dtype())
    return out


def load_targets(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], list[str]]:
    """What a checkpoint fills: every parameter and persistent buffer by name (a GPTQ linear's int32
    `qweight` is a buffer), a tensor shared by several names (tied embeddings) under its first name only.
    Returns (targets, the other names of shared tensors)."""
    targets: dict[str, torch.Tensor] = {}
    aliases, seen = [], set()
    for name, tensor in model.state_dict(keep_vars=True).items():
        if id(tensor) in seen:
            aliases.append(name)
        else:
            seen.add(id(tensor))
            targets[name] = tensor
    return targets, aliases


@torch.no_grad()
def load_weights(model: torch.nn.Module, path: Path, ignore: Iterable[str] | None = None) -> None:
    """Copy every checkpoint tensor into the model's parameter or persistent buffer of the same name.

    Floating tensors are converted to the model's dtype; any other tensor (an int32 `qweight`) must already
    have the model's dtype and is copied bit for bit. `ignore`: fnmatch patterns of checkpoint names to skip;
    by default `DEFAULT_IGNORE` and the second names of tied tensors (`lm_head.weight` with tied embeddings,
    which some checkpoints store anyway). A missing, unexpected or mis-shaped tensor is a ModelFormatError.
    """
    targets, aliases = load_targets(model)
    ignore = [*DEFAULT_IGNORE, *aliases] if ignore is None else list(ignore)
    files = checkpoint_files(path)
    loaded: set[str] = set()
    for file in files:
        with open_checkpoint_file(file) as f:
            for name in f.keys():
                if any(fnmatch(name, pattern) for pattern in ignore):
                    continue
                if name not in targets:
                    raise ModelFormatError(f"{file}: unexpected tensor {name!r}, which the model does not have")
                if name in loaded:
                    raise ModelFormatError(f"{file}: tensor {name!r} is stored twice in the checkpoint")
                _copy(targets[name], f.get_tensor(name), name, file)
                loaded.add(name)
    missing = [name for name in targets if name not in loaded]
    if missing:
        where = files[0] if len(files) == 1 else path / "model.safetensors.index.json"
        raise ModelFormatError(f"{where}: missing {len(missing)} tensor(s) the model needs: "
                               f"{', '.join(map(repr, missing[:3]))}{', ...' if len(missing) > 3 else ''}")


def _copy(target: torch.Tensor, tensor: torch.Tensor, name: str, file: Path) -> None:
    if tuple(tensor.shape) != tuple(target.shape):
        raise ModelFormatError(f"{file}: shape mismatch for {name!r}: checkpoint {tuple(tensor.shape)}, "
                               f"model {tuple(target.shape)}")
    if not (tensor.is_floating_point() and target.is_floating_point()) and tensor.dtype != target.dtype:
        raise ModelFormatError(f"{file}: dtype mismatch for {name!r}: checkpoint {tensor.dtype}, model {target.dtype} "
                               "(only floating-point tensors are converted)")
    target.copy_(tensor)


def load_model(name: str, dtype: torch.dtype, device: str | torch.device,
               linear_factory: Callable[[int, int, bool], torch.nn.Module] = make_linear):
    """Resolve `name`, build the shared Qwen3 model (its projections made by `linear_factory`) and load its
    weights. Returns (model, config, path)."""
    from shared.model.qwen3 import Qwen3ForCausalLM

    path = resolve_model(name)
    config = ModelConfig.from_dir(path)
    if config.quant_method and linear_factory is make_linear:
        raise ModelFormatError(f"{path}: a {config.quant_method.upper()}-quantized checkpoint; this engine loads "
                               f"full-precision weights only. Run it with m7_gptq, which loads GPTQ weights.")
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config, linear_factory)
    model = model.to_empty(device=device).to(dtype)
    model.tie_weights()
    load_weights(model, path)
    return model.eval(), config, path


def load_for_engine(config, linear_factory: Callable[[int, int, bool], torch.nn.Module] = make_linear):
    """Everything an engine needs from disk: (model, ModelConfig, Tokenizer, max_model_len). On CPU it also
    sets torch's thread count to `config.num_threads` (see shared.config.default_num_threads).
    `linear_factory` builds the decoder's projections (m7: GPTQ layers)."""
    from shared.tokenizer import Tokenizer

    if config.device == "cpu":
        torch.set_num_threads(config.num_threads)

    model, model_config, path = load_model(config.model, config.torch_dtype, config.device, linear_factory)
    limit = model_config.max_position_embeddings
    if config.max_model_len is not None and config.max_model_len > limit:
        raise ValueError(f"max_model_len {config.max_model_len} exceeds the model's max_position_embeddings {limit}")
    return model, model_config, Tokenizer(path), config.max_model_len or limit
