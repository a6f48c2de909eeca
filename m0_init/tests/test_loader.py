"""Model resolution and weight loading: bundled/local/hub names, and errors that name the problem."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from shared.loader import BUNDLED, ModelFormatError, ModelNotFoundError, load_model, load_weights, resolve_model


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
        ("", "model name is empty"),
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


def _copy_checkpoint(tmp_path, edit=None):
    """A copy of the bundled model in tmp_path, its tensors changed by `edit` (a function of the dict)."""
    src = BUNDLED["tiny-qwen3"]
    for f in src.iterdir():
        if f.name != "model.safetensors":
            (tmp_path / f.name).write_bytes(f.read_bytes())
    tensors = load_file(src / "model.safetensors")
    if edit:
        edit(tensors)
    save_file(tensors, tmp_path / "model.safetensors")
    return tmp_path


def _edit_config(key, value=None):
    def edit(path):
        cfg = json.loads((path / "config.json").read_text())
        cfg.pop(key) if value is None else cfg.update({key: value})
        (path / "config.json").write_text(json.dumps(cfg))
    return edit


def _truncate(path):
    data = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(data[: len(data) // 2])


def _shrink(t):
    t["model.norm.weight"] = t["model.norm.weight"][:10]


BROKEN = {  # name -> (edit of the tensors, edit of the directory, the file named, what the message says)
    "missing config key": (None, _edit_config("hidden_size"), "config.json", "missing required key 'hidden_size'"),
    "ill-typed config value": (None, _edit_config("num_hidden_layers", "4"), "config.json",
                               "num_hidden_layers must be an integer >= 1, got '4'"),
    "config not JSON": (None, lambda p: (p / "config.json").write_text("{ nope"), "config.json", "not valid JSON"),
    "truncated weights": (None, _truncate, "model.safetensors",
                          "not a readable safetensors file (truncated or corrupt): "),
    "missing tensor": (lambda t: t.pop("model.layers.2.mlp.up_proj.weight"), None, "model.safetensors",
                       "missing 1 tensor(s) the model needs: 'model.layers.2.mlp.up_proj.weight'"),
    "unexpected tensor": (lambda t: t.update({"model.extra.weight": torch.zeros(2)}), None, "model.safetensors",
                          "unexpected tensor 'model.extra.weight'"),
    "mis-shaped tensor": (_shrink, None, "model.safetensors",
                          "shape mismatch for 'model.norm.weight': checkpoint (10,), model (256,)"),
    "int tensor for a float": (lambda t: t.update({"model.norm.weight": torch.ones(256, dtype=torch.int32)}), None,
                               "model.safetensors", "dtype mismatch for 'model.norm.weight'"),
}


def broken_model(tmp_path, case: str) -> Path:
    edit_tensors, edit_dir, _, _ = BROKEN[case]
    path = _copy_checkpoint(tmp_path, edit_tensors)
    if edit_dir:
        edit_dir(path)
    return path


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_model_directory_is_one_error_naming_the_file(tmp_path, case):
    path = broken_model(tmp_path, case)
    _, _, file, message = BROKEN[case]
    with pytest.raises(ModelFormatError) as e:
        load_model(str(path), torch.float32, "cpu")
    assert str(e.value).startswith(f"{path / file}: ") and message in str(e.value)


@pytest.mark.parametrize("case", ["missing config key", "truncated weights"])
def test_m0_cli_on_a_broken_directory_prints_one_line(tmp_path, case):
    path = broken_model(tmp_path, case)
    r = subprocess.run([sys.executable, "-m", "m0_init", "--model", str(path)], capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"error: {path / BROKEN[case][2]}: ") and BROKEN[case][3] in lines[0]


def test_tied_lm_head_and_rotary_frequencies_in_a_checkpoint_are_skipped(tmp_path):
    def add(t):
        t["lm_head.weight"] = t["model.embed_tokens.weight"].clone()
        t["model.rotary_emb.inv_freq"] = torch.ones(8)

    model, _, _ = load_model(str(_copy_checkpoint(tmp_path, add)), torch.float32, "cpu")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()


class QuantLinear(nn.Module):
    """A stand-in for a GPTQ linear: integer buffers the checkpoint fills as they are, and a non-persistent cache."""

    def __init__(self):
        super().__init__()
        self.register_buffer("qweight", torch.zeros(4, 2, dtype=torch.int32))
        self.register_buffer("scales", torch.zeros(2))
        self.register_buffer("workspace", torch.zeros(3), persistent=False)
        self.bias = nn.Parameter(torch.zeros(2))


def test_buffers_load_and_integers_are_copied_bit_exact(tmp_path):
    qweight = torch.tensor([[-1, 2**31 - 1], [-(2**31), 123456789], [7, 0], [16777217, -16777217]], dtype=torch.int32)
    tensors = {"qweight": qweight, "scales": torch.tensor([0.5, 0.25], dtype=torch.float16),
               "bias": torch.tensor([1.0, 2.0]), "old.rotary_emb.inv_freq": torch.ones(4)}
    save_file(tensors, tmp_path / "model.safetensors")
    module = QuantLinear()
    load_weights(module, tmp_path)  # the default ignores the rotary frequencies old checkpoints store
    assert torch.equal(module.qweight, qweight) and module.scales.tolist() == [0.5, 0.25] and module.bias.tolist() == [1, 2]
    save_file({**tensors, "extra.g_idx": torch.zeros(2)}, tmp_path / "model.safetensors")
    load_weights(QuantLinear(), tmp_path, ignore=["extra.*", "*.inv_freq"])  # the caller's list replaces the default
    with pytest.raises(ModelFormatError, match=r"unexpected tensor 'extra\.g_idx'"):
        load_weights(QuantLinear(), tmp_path)
    save_file({**tensors, "qweight": qweight.long()}, tmp_path / "model.safetensors")
    with pytest.raises(ModelFormatError, match=r"dtype mismatch for 'qweight': checkpoint torch.int64, model torch.int32"):
        load_weights(QuantLinear(), tmp_path)


class MyLinear(nn.Linear):
    pass


def test_linear_factory_builds_every_projection():
    made = []

    def factory(in_features, out_features, bias):
        made.append((in_features, out_features, bias))
        return MyLinear(in_features, out_features, bias=bias)

    model, config, _ = load_model("tiny-qwen3", torch.float32, "cpu", linear_factory=factory)
    assert len(made) == 7 * config.num_hidden_layers  # q, k, v, o, gate, up, down
    layer = model.model.layers[0]
    assert all(isinstance(m, MyLinear) for m in (layer.self_attn.q_proj, layer.self_attn.o_proj, layer.mlp.down_proj))
    ref = load_file(BUNDLED["tiny-qwen3"] / "model.safetensors")
    assert torch.equal(layer.mlp.down_proj.weight, ref["model.layers.0.mlp.down_proj.weight"].float())


def test_hub_id_resolves_from_the_hf_cache_offline(tmp_path):
    """A hub id that is in the HF cache loads with no network (what `--model Qwen/Qwen3-0.6B` does for a user)."""
    import os

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


@pytest.mark.parametrize(("edit", "named", "message"), [
    (lambda p: (p / "tokenizer.json").write_text("{not json"), "tokenizer.json", "not valid JSON"),
    (lambda p: (p / "tokenizer.json").unlink(), "", "the tokenizer cannot be loaded"),
])
def test_a_broken_tokenizer_is_one_error_naming_the_file(tmp_path, edit, named, message):
    from shared.tokenizer import Tokenizer

    path = tmp_path / "model"
    shutil.copytree(BUNDLED["tiny-qwen3"], path)
    edit(path)
    with pytest.raises(ModelFormatError) as e:
        Tokenizer(path)
    assert str(e.value).startswith(f"{path / named}: ".replace("/: ", ": ")) and message in str(e.value)
    assert "\n" not in str(e.value)
