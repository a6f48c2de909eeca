"""HuggingFace transformers reference runs: the ground truth for parity tests, notebooks and benchmarks."""

from __future__ import annotations

from pathlib import Path

import torch

from shared.config import DTYPES, ModelConfig
from shared.loader import resolve_model


def load_hf_model(model: str | Path, dtype: str = "float32", device: str = "cpu"):
    """`transformers.AutoModelForCausalLM` for a bundled name, directory or hub id, in eval mode."""
    from transformers import AutoModelForCausalLM

    path = resolve_model(str(model))
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype], attn_implementation="sdpa")
    return hf.to(device).eval()


def eos_ids(model: str | Path) -> tuple[int, ...]:
    return ModelConfig.from_dir(resolve_model(str(model))).eos_token_ids


@torch.inference_mode()
def hf_greedy(hf_model, prompt_ids: list[list[int]], max_new_tokens: int, eos_token_ids: tuple[int, ...] = (),
              ignore_eos: bool = False) -> list[list[int]]:
    """HF `generate(do_sample=False)` one prompt at a time (no padding); new tokens only, cut after EOS."""
    from transformers import GenerationConfig

    eos = [] if ignore_eos or not eos_token_ids else list(eos_token_ids)
    # eos_token_id=[] (not None): None is filled in from the checkpoint's generation_config.json and would
    # stop at EOS; masking EOS with min_new_tokens instead would change the argmax
    gen = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos,
                           pad_token_id=eos_token_ids[0] if eos_token_ids else 0)
    outs = []
    device = next(hf_model.parameters()).device
    for ids in prompt_ids:
        x = torch.tensor([ids], device=device)
        y = hf_model.generate(x, attention_mask=torch.ones_like(x), generation_config=gen)
        new = y[0, len(ids):].tolist()
        if eos:
            for i, t in enumerate(new):
                if t in eos:
                    new = new[: i + 1]
                    break
        outs.append(new)
    return outs


@torch.inference_mode()
def hf_logits(hf_model, ids: list[int]) -> torch.Tensor:
    """Full-sequence logits [T, vocab] in float32."""
    device = next(hf_model.parameters()).device
    return hf_model(torch.tensor([ids], device=device)).logits[0].float()


@torch.inference_mode()
def our_logits(model, ids: list[int]) -> torch.Tensor:
    """The shared model's full-sequence logits [T, vocab] for one prompt, with a cache-free causal backend."""
    from shared.attention import AttentionMetadata, WholeSequenceAttention

    device = next(model.parameters()).device
    x = torch.tensor(ids, device=device)
    hidden = model(x, torch.arange(len(ids), device=device), WholeSequenceAttention(), AttentionMetadata())
    return model.compute_logits(hidden)


def random_checkpoint(preset: str, out_dir: Path, seed: int = 0, dtype: str = "float32", **overrides) -> Path:
    """Save a random-weight Qwen3 of a preset shape (see shared.config.PRESETS) as an HF directory."""
    from transformers import Qwen3ForCausalLM

    from shared.config import preset_hf_config
    from shared.loader import BUNDLED
    from shared.tokenizer import Tokenizer

    torch.manual_seed(seed)
    cfg = preset_hf_config(preset, **overrides)
    model = Qwen3ForCausalLM(cfg).to(DTYPES[dtype])
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tok = Tokenizer(BUNDLED["tiny-qwen3"]).hf  # any byte-level tokenizer works: ids beyond its vocab are never decoded in tests
    tok.save_pretrained(out_dir)
    return out_dir


LONG_PROMPT = "".join(
    f"def handler_{i}(request, retries={i % 4}):\n    \"\"\"Handle request number {i}.\"\"\"\n    return request.get({i!r})\n\n"
    for i in range(24)
)  # about 700 tokens with the tiny tokenizer: a prompt of several hundred tokens


def parity_prompts(tokenizer) -> list[str]:
    """The prompts every parity check uses: plain code, prose, chat-templated, non-ASCII, and a long one."""
    return [
        "def fibonacci(n):",
        "import os\nimport sys\n\n\ndef main(argv):\n",
        'class Stack:\n    """A last-in, first-out container."""\n\n    def __init__(self):\n',
        "The quick brown fox jumps over the lazy dog. Then",
        "# Grüße aus Zürich — 世界 🚀 naïve café\ndef greet(name):\n",
        tokenizer.apply_chat_template("Write a Python function `merge`: Merge two sorted lists into one."),
        tokenizer.apply_chat_template("Return the number of lines in a file."),
        "    for key, value in sorted(mapping.items()):\n        if",
        LONG_PROMPT,
    ]


def held_out_prompt(tokenizer, num_tokens: int) -> list[int]:
    """`num_tokens` token ids of held-out text (standard-library files tiny-qwen3 never trained on, end to end):
    the long prompts of the 8K-context checks. Deterministic for a given Python version."""
    from shared.corpus import held_out_files

    ids: list[int] = []
    for path in held_out_files():
        ids += tokenizer.encode(path.read_text(encoding="utf-8", errors="ignore"))
        if len(ids) >= num_tokens:
            return ids[:num_tokens]
    raise ValueError(f"the held-out text has only {len(ids):,} tokens, fewer than {num_tokens:,}")


@torch.inference_mode()
def hf_greedy_scored(hf_model, prompt_ids: list[int], max_new_tokens: int, **generation) -> tuple[list[int], torch.Tensor]:
    """HF `generate(do_sample=False, **generation)` for one prompt, EOS ignored (e.g. `repetition_penalty=1.3`): the
    new tokens, and the raw logits [max_new_tokens, vocab] in float32 (before any logits processor, HF's
    `output_logits`) each token was chosen from."""
    from transformers import GenerationConfig

    gen = GenerationConfig(do_sample=False, max_new_tokens=max_new_tokens, min_new_tokens=0, eos_token_id=[], pad_token_id=0,
                           return_dict_in_generate=True, output_logits=True, **generation)
    x = torch.tensor([prompt_ids], device=next(hf_model.parameters()).device)
    out = hf_model.generate(x, attention_mask=torch.ones_like(x), generation_config=gen)
    return out.sequences[0, len(prompt_ids):].tolist(), torch.cat(out.logits).float()
