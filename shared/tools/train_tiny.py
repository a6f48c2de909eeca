"""Train the bundled `tiny-qwen3` model from scratch on Python's standard library source.

Run with `python -m shared.tools.train_tiny` (about 20 minutes on 2 CPU cores). It writes an HF-format model to
`shared/assets/tiny-qwen3/`: config.json, model.safetensors, tokenizer files and `training.json` with the
setup, the loss curve and the held-out perplexity. Everything it needs is on every machine offline.

Corpus: every `.py` file of the running interpreter's standard library (tests excluded), plus chat-formatted
examples built from the same files (user: a function's docstring, assistant: the function's source), so
that `--chat` prompts produce something related to the question. Every 40th file is held out for the
perplexity measurement.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import random
import time
from pathlib import Path

import torch

from shared.corpus import HELD_OUT_EVERY, stdlib_files

ASSET_DIR = Path(__file__).parent.parent / "assets" / "tiny-qwen3"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def chat_examples(source: str) -> list[str]:
    """One chat transcript per documented function: the docstring asks, the source answers."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and (doc := ast.get_docstring(node)):
            body = ast.get_source_segment(source, node)
            if body and len(body) < 1500:
                question = doc.strip().split("\n\n")[0].replace("\n", " ")
                out.append(
                    f"<|im_start|>user\nWrite a Python function `{node.name}`: {question}<|im_end|>\n"
                    f"<|im_start|>assistant\n{body}<|im_end|>\n"
                )
    return out


def build_corpus() -> tuple[list[str], list[str]]:
    train, held_out = [], []
    for i, path in enumerate(stdlib_files()):
        text = path.read_text(encoding="utf-8", errors="ignore")
        (held_out if i % HELD_OUT_EVERY == 0 else train).append(text)
        if i % HELD_OUT_EVERY:
            train.extend(chat_examples(text))
    return train, held_out


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIALS[1:],
        chat_template=CHAT_TEMPLATE,
        model_max_length=8192,
    )


def encode_stream(tokenizer, texts: list[str]) -> torch.Tensor:
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text)["input_ids"])
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def batches(stream: torch.Tensor, batch: int, seq: int, gen: torch.Generator):
    while True:
        starts = torch.randint(0, len(stream) - seq - 1, (batch,), generator=gen)
        yield torch.stack([stream[s : s + seq] for s in starts.tolist()])


@torch.no_grad()
def perplexity(model, stream: torch.Tensor, seq: int, max_windows: int = 64) -> float:
    model.eval()
    n = min(max_windows, (len(stream) - 1) // seq)
    windows = stream[: n * seq].view(n, seq)
    losses = [model(input_ids=w[None], labels=w[None]).loss.item() for w in windows]
    model.train()
    return math.exp(sum(losses) / len(losses))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--out", type=Path, default=ASSET_DIR)
    args = ap.parse_args()

    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    random.seed(0)
    train_texts, held_texts = build_corpus()
    random.shuffle(train_texts)
    t0 = time.time()
    tokenizer = train_tokenizer(train_texts[: len(train_texts) // 3], args.vocab)
    train_ids = encode_stream(tokenizer, train_texts)
    held_ids = encode_stream(tokenizer, held_texts)
    print(f"corpus: {len(train_ids):,} train tokens, {len(held_ids):,} held-out tokens ({time.time() - t0:.0f}s)")

    eos, im_end = tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=8192,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    model = Qwen3ForCausalLM(config).float()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} parameters")

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warmup = 100

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, args.steps - warmup)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    gen = torch.Generator().manual_seed(0)
    data = batches(train_ids, args.batch, args.seq, gen)
    curve = []
    t0 = time.time()
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        x = next(data)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == args.steps - 1:
            curve.append((step, round(loss.item(), 4)))
            print(f"step {step:5d}  loss {loss.item():.3f}  {time.time() - t0:.0f}s", flush=True)
    train_seconds = time.time() - t0

    model = model.to(torch.bfloat16)  # stored in bf16: half the bytes; tests load it as float32 exactly
    ppl = perplexity(model.float(), held_ids, args.seq)
    final_loss = sum(loss for _, loss in curve[-4:]) / len(curve[-4:])
    print(f"held-out perplexity {ppl:.2f}, final train loss {final_loss:.3f}")

    args.out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(args.out)
    GenerationConfig(bos_token_id=eos, eos_token_id=[im_end, eos], pad_token_id=eos).save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    (args.out / "training.json").write_text(
        json.dumps(
            {
                "corpus": "Python standard library source (tests excluded) + docstring->function chat examples",
                "train_tokens": len(train_ids),
                "held_out_tokens": len(held_ids),
                "parameters": n_params,
                "steps": args.steps,
                "batch": args.batch,
                "seq_len": args.seq,
                "tokens_seen": args.steps * args.batch * args.seq,
                "lr": args.lr,
                "train_seconds": round(train_seconds),
                "final_train_loss": round(final_loss, 4),
                "held_out_perplexity": round(ppl, 3),
                "loss_curve": curve,
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
