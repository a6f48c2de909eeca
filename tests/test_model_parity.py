"""The shared Qwen3 model's logits equal HuggingFace `Qwen3ForCausalLM`'s (float32).

Tolerance: log-softmax outputs agree within atol 5e-5 / rtol 1e-4 on both the bundled model and the
28-layer Qwen3-0.6B shape (random weights). Measured on 2026-11-26 (torch 2.13 CPU, transformers 5.24):
max |log-prob difference| 1.3e-5 (tiny-qwen3, 9 prompts) and 3.8e-6 (0.6B shape, 48 tokens). Argmax
tokens must be identical at every position.
"""

import pytest
import torch
from transformers import Qwen3ForCausalLM

from shared.config import ModelConfig, preset_hf_config
from shared.loader import load_model
from shared.model.qwen3 import Qwen3ForCausalLM as OurQwen3
from shared.tools.reference import hf_logits, our_logits, parity_prompts
from shared.tools.testing import hf_model, tiny_tokenizer


def _compare(ours, hf, ids, atol):
    a = our_logits(ours, ids).log_softmax(-1)
    b = hf_logits(hf, ids).log_softmax(-1)
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-4)
    assert torch.equal(a.argmax(-1), b.argmax(-1))
    return (a - b).abs().max().item()


def test_tiny_logits_match_hf():
    ours, _, _ = load_model("tiny-qwen3", torch.float32, "cpu")
    tok = tiny_tokenizer()
    for prompt in parity_prompts(tok):
        _compare(ours, hf_model("tiny-qwen3"), tok.encode(prompt), atol=5e-5)


@pytest.mark.slow
def test_qwen3_0_6b_shape_logits_match_hf():
    """Exact Qwen3-0.6B shape: 28 layers, hidden 1024, 16 q / 8 kv heads, head_dim 128, vocab 151936, tied."""
    torch.manual_seed(0)
    cfg = preset_hf_config("qwen3-0.6b")
    hf = Qwen3ForCausalLM(cfg).eval()
    config = ModelConfig.from_hf_dict(cfg.to_dict())
    with torch.device("meta"):
        ours = OurQwen3(config)
    ours.load_state_dict(hf.state_dict(), assign=True)  # the same tensors: no second 2.4 GB copy
    ours.tie_weights()
    assert sum(p.numel() for p in ours.parameters()) == 596_049_920
    ids = torch.randint(0, cfg.vocab_size, (48,), generator=torch.Generator().manual_seed(1)).tolist()
    _compare(ours, hf, ids, atol=5e-5)


def test_qwen2_logits_match_hf():
    """Qwen2 (q/k/v biases, no q/k norm) through the same model code."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=False, initializer_range=0.1)
    hf = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # HF initialises biases to zero: make them matter
        for layer in hf.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
    config = ModelConfig.from_hf_dict(cfg.to_dict())
    assert config.attention_bias and not config.qk_norm
    ours = OurQwen3(config)
    ours.load_state_dict(hf.state_dict())
    _compare(ours, hf, list(range(3, 60)), atol=5e-5)


def test_tiny_greedy_output_is_varied():
    """A trained model: HF's greedy output is not one token repeated (that would hide KV-cache bugs)."""
    from shared.tools.testing import hf_reference

    for ref in hf_reference("tiny-qwen3"):
        assert len(set(ref)) >= 8
