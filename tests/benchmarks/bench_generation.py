"""fs_ray's batched decoding against Hugging Face ``generate`` called one example at a time: the
same model, weights, prompts and settings, measured side by side in one run (by hand, not in CI).

    .venv/bin/python tests/benchmarks/bench_generation.py [--examples 64] [--batch 16] [--new 32]

For each model kind (a Wenzhong-shaped decoder and a Randeng-T5-shaped encoder-decoder, random
weights, the Chinese BERT vocabulary) it decodes the first ``--examples`` documents of the shipped
corpus (cut to 48 tokens) greedily for exactly ``--new`` tokens (the end token is
held back until then, so both sides generate the same number of tokens), once per example with ``model.generate`` and in
batches of ``--batch`` with :func:`fs_ray.generation.generate_ids` (left padding for the decoder).
It checks that both give the same tokens and prints tokens/s and the ratio. CPU threads: torch's
default (every core).
"""

from __future__ import annotations

import argparse
import time

import torch

from fs_ray.assets import DEMO_CORPUS
from fs_ray.data.tokenization import load_tokenizer
from fs_ray.generation import generate_ids

EOS, PAD = 102, 0  # [SEP], [PAD]
# both sides: exactly --new tokens per row (the end token is held back until then) and never the pad
# token (a random T5 would emit it first; the batched side would drop it as padding)
SAME_LENGTH = {"suppress_tokens": [PAD]}


def prompts(tok, n: int) -> list[list[int]]:
    lines = [t for t in DEMO_CORPUS.read_text(encoding="utf-8").splitlines() if t.strip()][:n]
    return [tok.encode(t, add_special_tokens=False).ids[:48] for t in lines]


def models(vocab: int):
    from transformers import GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=vocab,
            n_embd=512,
            n_layer=6,
            n_head=8,
            pad_token_id=PAD,
            bos_token_id=101,
            eos_token_id=EOS,
        )
    )
    t5 = T5ForConditionalGeneration(
        T5Config(
            vocab_size=vocab, d_model=512, d_ff=1024, num_layers=6, num_heads=8, decoder_start_token_id=0
        )
    )
    return {"clm (GPT2 512x6)": gpt2.eval(), "seq2seq (T5 512x6+6)": t5.eval()}


def one_at_a_time(model, rows, decoder: bool, new: int) -> list[list[int]]:
    out = []
    with torch.no_grad():
        for r in rows:
            ids = torch.tensor([r])
            seq = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                                 min_new_tokens=new, do_sample=False, num_beams=1, eos_token_id=EOS,
                                 pad_token_id=PAD, **SAME_LENGTH)  # fmt: skip
            out.append(seq[0, ids.shape[1] :].tolist() if decoder else seq[0, 1:].tolist())
    return out


def batched(model, rows, decoder: bool, new: int, batch: int) -> list[list[int]]:
    out = []
    for i in range(0, len(rows), batch):
        part = rows[i : i + batch]
        width = max(map(len, part))
        ids = torch.tensor([r + [PAD] * (width - len(r)) for r in part])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in part])
        out += generate_ids(model, ids, mask, decoder=decoder, max_new_tokens=new, settings=None, eos=EOS, pad=PAD,
                            min_new_tokens=new, **SAME_LENGTH)  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new", type=int, default=32)
    args = ap.parse_args()
    tok = load_tokenizer("bert-chinese")
    rows = prompts(tok, args.examples)
    print(
        f"{len(rows)} prompts of <= 48 tokens, {args.new} new tokens each, greedy, {torch.get_num_threads()} threads"
    )
    print(
        f"| model | HF generate, one at a time (tok/s) | fs_ray batched x{args.batch} (tok/s) | ratio | same tokens |"
    )
    print("|---|---:|---:|---:|---|")
    for name, model in models(tok.get_vocab_size()).items():
        decoder = name.startswith("clm")
        t = time.perf_counter()
        ref = one_at_a_time(model, rows, decoder, args.new)
        t_one = time.perf_counter() - t
        t = time.perf_counter()
        ours = batched(model, rows, decoder, args.new, args.batch)
        t_batch = time.perf_counter() - t
        n = sum(map(len, ours))
        same = sum(a == b for a, b in zip(ref, ours, strict=True))
        print(
            f"| {name} | {n / t_one:.0f} | {n / t_batch:.0f} | {t_one / t_batch:.1f}x | {same}/{len(rows)} |"
        )


if __name__ == "__main__":
    main()
