"""Find a model (bundled name, local directory or HF hub id) and load its safetensors weights by name.

Weight loading is kept apart from the model math (nanoGPT's habit): the model's parameter names equal
HuggingFace's, so a checkpoint loads as-is, and every missing, unexpected or mis-shaped key is an error
that names the key.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from shared.config import ModelConfig

ASSETS = Path(__file__).parent / "assets"
BUNDLED = {"tiny-qwen3": ASSETS / "tiny-qwen3"}
HF_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model"]


class ModelNotFoundError(ValueError):
    """The model name resolves to nothing this machine has."""


def resolve_model(name: str | Path) -> Path:
    """Return the local directory that holds `name`: a bundled model, a directory, or a cached/downloaded hub id."""
    name = str(name)
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
    index = path / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / s for s in shards]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelNotFoundError(f"no *.safetensors weights in {path}")
    return files


def checkpoint_tensors(path: Path):
    """Yield (name, tensor) for every tensor in the checkpoint, one shard at a time."""
    for file in checkpoint_files(path):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def checkpoint_shapes(path: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype) read from the safetensors headers alone, without loading any tensor."""
    out = {}
    for file in checkpoint_files(path):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                sl = f.get_slice(name)
                out[name] = (tuple(sl.get_shape()), sl.get_dtype())
    return out


@torch.no_grad()
def load_weights(model: torch.nn.Module, path: Path, tie_word_embeddings: bool) -> None:
    """Copy checkpoint tensors into `model` by name, converting dtype; errors name the offending key."""
    params = dict(model.named_parameters())
    if tie_word_embeddings:
        params.pop("lm_head.weight", None)  # shares embed_tokens.weight
    loaded = set()
    for name, tensor in checkpoint_tensors(path):
        if tie_word_embeddings and name == "lm_head.weight":
            continue  # some tied checkpoints store it anyway
        if name not in params:
            raise KeyError(f"checkpoint {path} has a tensor {name!r} that the model does not have")
        param = params[name]
        if tuple(tensor.shape) != tuple(param.shape):
            raise ValueError(f"shape mismatch for {name!r}: checkpoint {tuple(tensor.shape)}, model {tuple(param.shape)}")
        param.copy_(tensor)
        loaded.add(name)
    missing = sorted(set(params) - loaded)
    if missing:
        raise KeyError(f"checkpoint {path} lacks {len(missing)} tensors the model needs, e.g. {missing[:3]}")


def load_model(name: str, dtype: torch.dtype, device: str | torch.device):
    """Resolve `name`, build the shared Qwen3 model and load its weights. Returns (model, config, path)."""
    from shared.model.qwen3 import Qwen3ForCausalLM

    path = resolve_model(name)
    config = ModelConfig.from_dir(path)
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    model = model.to_empty(device=device).to(dtype)
    model.tie_weights()
    load_weights(model, path, config.tie_word_embeddings)
    return model.eval(), config, path


def load_for_engine(config):
    """Everything an engine needs from disk: (model, ModelConfig, Tokenizer, max_model_len)."""
    from shared.tokenizer import Tokenizer

    model, model_config, path = load_model(config.model, config.torch_dtype, config.device)
    limit = model_config.max_position_embeddings
    if config.max_model_len is not None and config.max_model_len > limit:
        raise ValueError(f"max_model_len {config.max_model_len} exceeds the model's max_position_embeddings {limit}")
    return model, model_config, Tokenizer(path), config.max_model_len or limit
