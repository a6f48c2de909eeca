"""ModelConfig / EngineConfig: parsing HF configs, the parameter formula, and validation messages."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, Qwen3ForCausalLM

from shared.config import BLOCK_SIZES, CacheConfig, EngineConfig, ModelConfig, SchedulerConfig, preset_hf_config
from shared.loader import BUNDLED


def test_tiny_config_matches_hf():
    ours = ModelConfig.from_dir(BUNDLED["tiny-qwen3"])
    hf = AutoConfig.from_pretrained(BUNDLED["tiny-qwen3"])
    assert (ours.hidden_size, ours.num_hidden_layers, ours.num_attention_heads, ours.num_key_value_heads) == (
        hf.hidden_size, hf.num_hidden_layers, hf.num_attention_heads, hf.num_key_value_heads)
    assert ours.head_dim == hf.head_dim and ours.vocab_size == hf.vocab_size
    assert ours.rope_theta == hf.rope_parameters["rope_theta"]
    assert ours.max_position_embeddings >= 8192
    assert ours.tie_word_embeddings and ours.qk_norm and not ours.attention_bias
    assert set(ours.eos_token_ids) == {0, 2}  # <|endoftext|> and <|im_end|> (from generation_config.json)


@pytest.mark.parametrize("preset", ["qwen3-0.6b", "qwen3-test"])
def test_parameter_formula_matches_hf(preset):
    cfg = preset_hf_config(preset)
    with torch.device("meta"):
        hf = Qwen3ForCausalLM(cfg)
    hf_count = sum(p.numel() for p in hf.parameters())  # parameters() counts a tied weight once
    assert ModelConfig.from_hf_dict(cfg.to_dict()).num_parameters() == hf_count


def test_qwen3_0_6b_shape():
    c = ModelConfig.from_hf_dict(preset_hf_config("qwen3-0.6b").to_dict())
    assert c.num_parameters() == 596_049_920
    assert c.kv_bytes_per_token(torch.bfloat16) == 2 * 28 * 8 * 128 * 2  # 112 KiB per token


def test_qwen2_config_has_bias_and_no_qk_norm(tmp_path):
    cfg = {"model_type": "qwen2", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rope_theta": 1e4}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    c = ModelConfig.from_dir(tmp_path)
    assert c.attention_bias and not c.qk_norm and c.head_dim == 16 and c.rope_theta == 1e4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"model_type": "llama"}, "unsupported model_type 'llama'"),
        ({"num_key_value_heads": 4}, "must be a multiple of num_key_value_heads (4)"),
        ({"head_dim": 15}, "head_dim must be even"),
    ],
)
def test_model_config_errors(kwargs, message):
    cfg = {**preset_hf_config("qwen3-test").to_dict(), **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ModelConfig.from_hf_dict(cfg)


def test_engine_config_defaults_and_errors():
    c = EngineConfig()
    assert c.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert c.torch_dtype == (torch.bfloat16 if c.device == "cuda" else torch.float32)
    with pytest.raises(ValueError, match="dtype must be one of"):
        EngineConfig(dtype="int3")
    with pytest.raises(ValueError, match="device must be"):
        EngineConfig(device="tpu")
    assert EngineConfig(model=Path("/some/dir")).model == "/some/dir"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_model_len": 1}, "max_model_len must be an integer >= 2, got 1"),
        ({"max_model_len": 64.0}, "max_model_len must be an integer >= 2, got 64.0"),
        ({"max_model_len": True}, "max_model_len must be an integer >= 2, got True"),
        ({"seed": "1"}, r"seed must be an integer in \[0, 2\*\*64\), got '1'"),
        ({"seed": -1}, r"seed must be an integer in \[0, 2\*\*64\)"),
        ({"model": 5}, "model must be a string or a path"),
        ({"device": None}, "device must be a string"),
        ({"device": "cuda:x"}, "device must be 'auto', 'cpu' or 'cuda"),
        ({"dtype": torch.float32}, "dtype must be a string"),
    ],
)
def test_engine_config_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message):
        EngineConfig(**kwargs)


def test_block_sizes_reach_flash_attn_and_must_be_ints():
    assert BLOCK_SIZES == (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
    assert CacheConfig(block_size=512).block_size == 512
    for bad in (16.0, True, 12, 1024):
        with pytest.raises(ValueError, match=f"block_size must be an integer, one of .*, got {bad!r}"):
            CacheConfig(block_size=bad)


def test_max_num_batched_tokens_below_max_model_len_needs_chunked_prefill():
    with pytest.raises(ValueError, match=r"max_num_batched_tokens must be an integer >= max_model_len \(256\), "
                                         r"got 100: .*chunked prefill \(M5"):
        SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=100).resolve(256)
    chunked = SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=100, enable_chunked_prefill=True).resolve(256)
    assert (chunked.max_num_batched_tokens, chunked.enable_chunked_prefill) == (100, True)
    assert SchedulerConfig(max_num_seqs=8).resolve(256).max_num_batched_tokens == 256
    for tokens, message in ((4, r"integer >= max_num_seqs \(8\), got 4"), (100.0, "got 100.0"), (True, "got True")):
        with pytest.raises(ValueError, match=message):
            SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=tokens, enable_chunked_prefill=True).resolve(256)


def test_torch_threads_default_to_half_the_cores_or_omp_num_threads(monkeypatch):
    """torch's default (a thread per core) ran 10-35x slower on 2 busy cores (docs/benchmarks.md, "Threads")."""
    import os

    from shared.config import default_num_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert EngineConfig(device="cpu").num_threads == default_num_threads() == max(1, (os.cpu_count() or 2) // 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert EngineConfig(device="cpu").num_threads == 3 and EngineConfig(device="cpu", num_threads=1).num_threads == 1
    with pytest.raises(ValueError, match="num_threads must be an integer >= 1"):
        EngineConfig(device="cpu", num_threads=0)


def test_loading_for_an_engine_on_cpu_sets_torch_threads():
    from shared.loader import load_for_engine

    before = torch.get_num_threads()
    try:
        load_for_engine(EngineConfig(device="cpu", num_threads=2))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
