"""Does unifying cost either side? Held-out MLM loss and LM perplexity of Zhouwenwang exports
pretrained on one budget with the unified objective, MLM only and LM only (the README's comparison):

    python tests/benchmarks/zhouwenwang_unified.py \
        unified=runs/zhouwenwang-small-clue/export mlm=runs/zhouwenwang-small-mlm/export \
        clm=runs/zhouwenwang-small-clm/export [--data ../shared/data] [--texts 600]

Every model reads the same held-out rows: text the pretraining corpus never held (CSL abstracts from
csl_generation and the FewCLUE dev sets, under --data), tokenized, whole-word-segmented and packed
by the pretraining corpus code (``tokenize_and_pack``, 128 tokens), then masked by the pretraining
``mlm`` objective with one seed (MLM loss: cross-entropy on the masked tokens under a bidirectional
mask) and read left to right (LM: next-token cross-entropy under a causal mask, perplexity = exp).
All three exports share one architecture, so each is scored both ways, including the side it was
not trained for (the chance-level reference: ln(vocabulary) = 9.96 nats for the BERT vocabulary).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch


def held_out_texts(data: Path, limit: int) -> list[str]:
    texts: list[str] = []
    csl = data / "csl_generation"
    for path in sorted(csl.glob("*")):
        if path.suffix in (".json", ".jsonl", ".tsv"):
            for line in path.read_text(encoding="utf-8").splitlines():
                text = _text_of(line)
                if text:
                    texts.append(text)
    for task in ("tnews", "iflytek", "csldcp", "eprstmt", "ocnli", "bustm"):
        path = data / "fewclue" / task / "dev_few_all.json"
        if path.is_file():
            texts += [t for t in map(_text_of, path.read_text(encoding="utf-8").splitlines()) if t]
    if not texts:
        sys.exit(f"no held-out text under {data} (csl_generation/, fewclue/*/dev_few_all.json)")
    rng = np.random.default_rng(0)
    seen, unique = set(), []
    for t in texts:
        if t not in seen:
            seen.add(t)
            unique.append(t)
    picked = rng.permutation(len(unique))[:limit]
    return [unique[i] for i in sorted(picked)]


def _text_of(line: str) -> str:
    line = line.strip()
    if not line:
        return ""
    if line.startswith("{"):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            return ""
        for key in ("abst", "abstract", "content", "sentence", "sentence1", "text"):
            if isinstance(row.get(key), str) and len(row[key]) >= 10:
                return row[key]
        return ""
    parts = line.split("\t")
    return max(parts, key=len) if max(map(len, parts)) >= 10 else ""


def batches(texts: list[str], seq_len: int = 128, size: int = 16):
    from fs_ray.config import load_config
    from fs_ray.data.corpus import tokenize_and_pack
    from fs_ray.data.ingest import collate
    from fs_ray.data.tokenization import load_tokenizer, special_ids
    from fs_ray.run_configs import PrepareConfig

    cfg = load_config(PrepareConfig, None, ["tokenizer.source=bert-chinese", f"pack.seq_len={seq_len}"])
    table, _ = tokenize_and_pack(texts, cfg)
    data = {k: table[k].to_numpy(zero_copy_only=False) for k in table.column_names}
    data["sample_id"] = np.arange(len(table))
    tok = load_tokenizer("bert-chinese")
    special = special_ids(tok, "bert-chinese").as_dict()
    out = [
        collate({k: v[i : i + size] for k, v in data.items()}, seq_len=seq_len, pad_id=special["pad"] or 0)
        for i in range(0, len(table), size)
    ]
    return out, special, tok.get_vocab_size(with_added_tokens=True), len(table)


@torch.no_grad()
def score(folder: str, rows, special, vocab) -> dict[str, float]:
    from fs_ray.objectives import get_objective
    from fs_ray.pretrained import load_model

    mlm_model = load_model(folder, "AutoModelForMaskedLM").eval()
    clm_model = load_model(folder, "AutoModelForCausalLM").eval()
    mlm = get_objective("mlm")
    gen = torch.Generator().manual_seed(1234)  # the same masks for every model
    sums = {"mlm": 0.0, "mlm_n": 0, "lm": 0.0, "lm_n": 0}
    for batch in rows:
        x = mlm.inputs(batch, special, vocab, gen)
        logits = mlm_model(input_ids=x["input_ids"], attention_mask=x["attention_mask"]).logits
        picked = x["labels"] != -100
        sums["mlm"] += float(torch.nn.functional.cross_entropy(logits[picked], x["labels"][picked], reduction="sum"))
        sums["mlm_n"] += int(picked.sum())
        ids, mask = batch["input_ids"], batch["attention_mask"]
        logits = clm_model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        nxt = mask[:, 1:].bool()
        sums["lm"] += float(
            torch.nn.functional.cross_entropy(logits[nxt], ids[:, 1:][nxt], reduction="sum")
        )
        sums["lm_n"] += int(nxt.sum())
    lm = sums["lm"] / sums["lm_n"]
    return {"mlm_loss": sums["mlm"] / sums["mlm_n"], "lm_loss": lm, "lm_ppl": math.exp(lm),
            "masked": sums["mlm_n"], "lm_tokens": sums["lm_n"]}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="name=export folder, e.g. unified=runs/zhouwenwang-small-clue/export")
    ap.add_argument("--data", default="../shared/data", help="folder with csl_generation/ and fewclue/")
    ap.add_argument("--texts", type=int, default=600, help="held-out texts drawn (seeded)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    texts = held_out_texts(Path(args.data), args.texts)
    rows, special, vocab, n = batches(texts)
    print(f"held out: {len(texts)} texts -> {n} packed rows of 128 tokens; ln(vocab) = {math.log(vocab):.2f}")
    print(f"{'model':<10} {'MLM loss':>9} {'LM loss':>8} {'LM ppl':>9}  seconds")
    for spec in args.models:
        name, _, folder = spec.partition("=")
        start = time.perf_counter()
        s = score(folder, rows, special, vocab)
        print(f"{name:<10} {s['mlm_loss']:9.3f} {s['lm_loss']:8.3f} {s['lm_ppl']:9.1f}  {time.perf_counter() - start:.0f}")


if __name__ == "__main__":
    main()
