"""Pretraining step throughput, measured side by side in one run (by hand, not in CI).

    .venv/bin/pip install -e '.[bench]'      # accelerate, for the Trainer baseline
    .venv/bin/python tests/benchmarks/bench_pretrain.py [--preset tiny] [--steps 30] [--batch 32]

One process, one CPU thread each, fp32, the same Erlangshen tiny shape, the same 128-token
sequences (the shipped corpus, prepared with jieba word starts), the same batch:

1. fs_ray's step: whole-word masking (fs_ray.objectives.masking) + MaskedLMLoss (vocabulary
   projection on masked positions only) + AdamW;
2. Hugging Face ``Trainer`` + ``BertForMaskedLM`` + ``DataCollatorForLanguageModeling``
   (token-level 15% masking: without a ``chinese_ref`` file the whole-word collator masks
   Chinese characters one by one, so this is its equivalent here);
3. this machine's fp32 GEMM rate (1024^3 matmul) and each step's model-FLOPs rate against it.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fs_ray.config import load_config
from fs_ray.data.corpus import prepare
from fs_ray.data.ingest import PreparedCorpus, collate
from fs_ray.families import get_family
from fs_ray.objectives.losses import MaskedLMLoss
from fs_ray.objectives.masking import MaskingIds, whole_word_mask
from fs_ray.run_configs import PrepareConfig


def gemm_flops(n: int = 1024, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def model_flops_per_token(cfg, seq_len: int, masked_fraction: float) -> float:
    """6 x (non-embedding params) + attention, + the vocabulary head on the masked share."""
    h, L, ff, V = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size, cfg.vocab_size
    per_layer = 4 * h * h + 2 * h * ff
    attention = 2 * seq_len * h  # QK^T and AV per token per layer
    head = h * h + h * V  # transform + decoder
    return 6 * (L * (per_layer + attention)) + 6 * head * masked_fraction


def load_rows(root: Path, n_rows: int):
    corpus = PreparedCorpus.load(str(root))
    ds = corpus.dataset().limit(n_rows)
    batch = {k: v for k, v in next(iter(ds.iter_batches(batch_size=n_rows, batch_format="numpy"))).items()}
    batch["sample_id"] = np.arange(len(batch["input_ids"]))
    return corpus, collate(batch, corpus.seq_len)


def bench_fs_ray(cfg, data, special, steps: int, batch: int) -> tuple[float, float]:
    torch.manual_seed(0)
    from transformers import BertForMaskedLM

    model = MaskedLMLoss(BertForMaskedLM(cfg))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = MaskingIds(
        mask=special["mask"], vocab_size=cfg.vocab_size, never_mask=(0, 101, 102), first_random=103
    )
    gen = torch.Generator().manual_seed(0)
    n = data["input_ids"].shape[0]
    masked = 0
    t = None
    for step in range(steps + 2):
        if step == 2:
            t, masked = time.perf_counter(), 0
        sl = slice((step * batch) % (n - batch), (step * batch) % (n - batch) + batch)
        inp, labels = whole_word_mask(
            data["input_ids"][sl], data["word_starts"][sl], data["attention_mask"][sl], ids, gen
        )
        loss = model(inp, data["attention_mask"][sl], labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        masked += int((labels != -100).sum())
    seconds = time.perf_counter() - t
    return steps * batch * data["input_ids"].shape[1] / seconds, masked / (
        steps * batch * data["input_ids"].shape[1]
    )


def bench_hf_trainer(cfg, data, steps: int, batch: int, tok_dir: str) -> float:
    import datasets
    from transformers import (
        BertForMaskedLM,
        DataCollatorForLanguageModeling,
        PreTrainedTokenizerFast,
        Trainer,
        TrainingArguments,
    )

    torch.manual_seed(0)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=f"{tok_dir}/tokenizer.json",
        pad_token="[PAD]",
        mask_token="[MASK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        unk_token="[UNK]",
    )
    rows = [r[m.bool()].tolist() for r, m in zip(data["input_ids"], data["attention_mask"], strict=True)]
    ds = datasets.Dataset.from_dict({"input_ids": rows})
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="hf_bench"),
        per_device_train_batch_size=batch,
        max_steps=steps + 2,
        learning_rate=1e-4,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    trainer = Trainer(
        model=BertForMaskedLM(cfg),
        args=args,
        train_dataset=ds,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15),
    )
    out = trainer.train()
    return (steps + 2) * batch * data["input_ids"].shape[1] / out.metrics["train_runtime"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    work = Path(tempfile.mkdtemp(prefix="fsr_pt_bench"))
    prepare(
        load_config(PrepareConfig, None, [f"output.dir={work / 'prep'}", "pack.seq_len=128"]),
        log=lambda *_: None,
    )
    corpus, data = load_rows(work / "prep", args.batch * 8)
    special = corpus.special_ids
    cfg = get_family("erlangshen").config(args.preset, corpus.manifest["tokenizer"]["vocab_size"], 128, special)

    gemm = gemm_flops()
    fs_tps, masked_fraction = bench_fs_ray(cfg, data, special, args.steps, args.batch)
    hf_tps = bench_hf_trainer(cfg, data, args.steps, args.batch, str(work / "prep"))
    fs_flops = fs_tps * model_flops_per_token(cfg, 128, masked_fraction)
    hf_flops = hf_tps * model_flops_per_token(cfg, 128, 1.0)
    print(
        f"Erlangshen {args.preset}: hidden {cfg.hidden_size}, {cfg.num_hidden_layers} layers, vocab {cfg.vocab_size}; "
        f"seq 128, batch {args.batch}, {args.steps} timed steps, 1 CPU thread, fp32"
    )
    print("| step | tokens/s | model GFLOP/s | of GEMM rate |")
    print("|---|---:|---:|---:|")
    print(
        f"| HF Trainer + BertForMaskedLM + DataCollatorForLanguageModeling | {hf_tps:,.0f} | {hf_flops / 1e9:.1f} | {hf_flops / gemm:.2f} |"
    )
    print(
        f"| fs_ray: whole-word mask + masked-only head | {fs_tps:,.0f} | {fs_flops / 1e9:.1f} | {fs_flops / gemm:.2f} |"
    )
    print(
        f"fs_ray / HF Trainer: {fs_tps / hf_tps:.2f}x   fp32 GEMM (1024^3): {gemm / 1e9:.1f} GFLOP/s   masked share {masked_fraction:.3f}"
    )


if __name__ == "__main__":
    main()
