"""Model resolution and weight loading: bundled/local/hub names, and errors that name the problem."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from shared.loader import BUNDLED, ModelNotFoundError, load_model, resolve_model


def test_bundled_model_resolves_and_loads():
    model, config, path = load_model("tiny-qwen3", torch.float32, "cpu")
    assert path == BUNDLED["tiny-qwen3"]
    # tied embeddings: one tensor, not a copy
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    ref = load_file(path / "model.safetensors")
    assert torch.equal(model.model.layers[1].self_attn.q_norm.weight, ref["model.layers.1.self_attn.q_norm.weight"].float())
    assert sum(p.numel() for p in model.parameters()) == config.num_parameters()


def test_local_directory_resolves(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(str(tmp_path)) == tmp_path


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("no-such-model", "unknown model 'no-such-model'"),
        ("folovllm-tests/definitely-not-a-model", "could not be downloaded"),
    ],
)
def test_unknown_model_errors(name, message):
    with pytest.raises(ModelNotFoundError, match=message) as e:
        resolve_model(name)
    assert name in str(e.value)
    assert isinstance(e.value, ValueError)  # user mistakes are ValueErrors: the CLI prints them, no traceback


def test_directory_without_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"no config\.json"):
        resolve_model(str(tmp_path))


def _copy_checkpoint(tmp_path, edit):
    src = BUNDLED["tiny-qwen3"]
    for f in src.iterdir():
        if f.name != "model.safetensors":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    tensors = load_file(src / "model.safetensors")
    edit(tensors)
    save_file(tensors, tmp_path / "model.safetensors")
    return str(tmp_path)


def test_missing_key_is_named(tmp_path):
    path = _copy_checkpoint(tmp_path, lambda t: t.pop("model.layers.2.mlp.up_proj.weight"))
    with pytest.raises(KeyError, match=r"model\.layers\.2\.mlp\.up_proj\.weight"):
        load_model(path, torch.float32, "cpu")


def test_unexpected_key_is_named(tmp_path):
    path = _copy_checkpoint(tmp_path, lambda t: t.update({"model.extra.weight": torch.zeros(2)}))
    with pytest.raises(KeyError, match=r"model\.extra\.weight"):
        load_model(path, torch.float32, "cpu")


def test_shape_mismatch_is_named(tmp_path):
    def shrink(t):
        t["model.norm.weight"] = t["model.norm.weight"][:10]

    path = _copy_checkpoint(tmp_path, shrink)
    with pytest.raises(ValueError, match=r"shape mismatch for 'model.norm.weight': checkpoint \(10,\)"):
        load_model(path, torch.float32, "cpu")


def test_hub_id_resolves_from_the_hf_cache_offline(tmp_path):
    """A hub id that is in the HF cache loads with no network (what `--model Qwen/Qwen3-0.6B` does for a user)."""
    import os
    import subprocess
    import sys

    snapshot = tmp_path / "hub" / "models--folovllm-test--tiny" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for f in BUNDLED["tiny-qwen3"].iterdir():
        (snapshot / f.name).write_bytes(f.read_bytes())
    (tmp_path / "hub" / "models--folovllm-test--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--folovllm-test--tiny" / "refs" / "main").write_text("0" * 40)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "COLUMNS": "160"}
    r = subprocess.run([sys.executable, "-m", "m1_basic", "def f(x):", "--model", "folovllm-test/tiny",
                        "--max-tokens", "5", "--ignore-eos"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "5 tokens" in r.stdout and "folovllm-test/tiny" in r.stdout
