"""Corpus preparation and ingest, measured side by side in one run (by hand, not in CI).

    .venv/bin/python tests/benchmarks/bench_prepare.py --data-dir ../shared/data [--repeat 2]

1. Preparation MB/s: fs_ray's Ray Data pipeline vs. ``datasets.Dataset.map(batched=True,
   num_proc=N)`` doing the *same* work per batch (the same cleaning, the same fast WordPiece
   tokenizer, the same jieba word starts, the same packing; parquet out), on the same cores.
2. Scaling: fs_ray with 1 vs. 2 parallel Ray tasks.
3. Ingest: tokens/s that one Ray Train worker receives through get_dataset_shard +
   iter_torch_batches while doing nothing else, vs. tokens/s one worker consumes in an
   Erlangshen MLM training step (BertForMaskedLM, tiny and base shapes, fp32, 1 CPU thread as a
   Ray worker with num_cpus=1 gets).

Inputs: ``corpora/*.txt`` and ``fewclue/*/unlabeled.json`` under ``--data-dir`` (or
``$FS_RAY_DATA_DIR``), copied ``--repeat`` times. Dedup is off on both sides (the baseline has none).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from fs_ray.config import load_config
from fs_ray.run_configs import PrepareConfig

TEXT_FIELDS = ["text", "sentence", "content"]


def gather_inputs(data_dir: Path, work: Path, repeat: int) -> list[Path]:
    sources = sorted((data_dir / "corpora").glob("*.txt")) + sorted(
        (data_dir / "fewclue").glob("*/unlabeled.json")
    )
    if not sources:
        raise SystemExit(f"no corpora/*.txt or fewclue/*/unlabeled.json under {data_dir}")
    inputs = []
    for r in range(repeat):
        for src in sources:
            name = f"{r}_{src.parent.name}_{src.name}".replace(".json", ".jsonl")
            dst = work / "raw" / name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            inputs.append(dst)
    return inputs


def prepare_config(inputs: list[Path], out: Path, seq_len: int, concurrency: int | None) -> PrepareConfig:
    return load_config(
        PrepareConfig,
        None,
        [
            f"input.paths=[{', '.join(str(p) for p in inputs)}]",
            f"input.text_field={json.dumps(TEXT_FIELDS)}",
            f"output.dir={out}",
            "output.overwrite=true",
            f"pack.seq_len={seq_len}",
            "clean.dedup=false",
            "progress_every_s=30",
            f"concurrency={concurrency or 'null'}",
        ],
    )


def run_fs_ray(inputs, out, seq_len, concurrency) -> tuple[float, dict]:
    from fs_ray.data.corpus import prepare

    cfg = prepare_config(inputs, out, seq_len, concurrency)
    t = time.perf_counter()
    manifest = prepare(cfg, log=lambda *_: None)
    return time.perf_counter() - t, manifest


def _baseline_batch(batch, cfg):
    from fs_ray.data.corpus import clean_batch, tokenize_and_pack

    kept, _, _ = clean_batch(batch["text"], cfg.clean)
    table, _ = tokenize_and_pack(kept, cfg)
    return {name: table[name].to_pylist() for name in table.column_names}


def run_datasets(inputs, out, seq_len, num_proc) -> tuple[float, int]:
    """The same work with Hugging Face datasets: load, map(batched=True, num_proc), to_parquet."""
    import datasets

    datasets.disable_progress_bars()
    cfg = prepare_config(inputs, out, seq_len, None)
    cache = Path(tempfile.mkdtemp(prefix="hfcache"))
    t = time.perf_counter()
    parts = []
    for path in inputs:
        if path.suffix == ".txt":
            d = datasets.load_dataset("text", data_files=str(path), split="train", cache_dir=str(cache))
        else:
            d = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(cache))
            field = next(f for f in TEXT_FIELDS if f in d.column_names)
            d = (
                d.select_columns([field]).rename_column(field, "text")
                if field != "text"
                else d.select_columns(["text"])
            )
        parts.append(d)
    ds = datasets.concatenate_datasets(parts)
    packed = ds.map(
        functools.partial(_baseline_batch, cfg=cfg),
        batched=True,
        batch_size=cfg.batch_docs,
        num_proc=num_proc,
        remove_columns=["text"],
    )
    out.mkdir(parents=True, exist_ok=True)
    packed.to_parquet(str(out / "data.parquet"))
    elapsed = time.perf_counter() - t
    shutil.rmtree(cache, ignore_errors=True)
    return elapsed, packed.num_rows


def _ingest_loop(config):
    import ray.train

    from fs_ray.data.ingest import collate

    shard = ray.train.get_dataset_shard("train")
    tokens = 0
    t = time.perf_counter()
    for batch in shard.iter_torch_batches(
        batch_size=config["batch"], collate_fn=functools.partial(collate, seq_len=config["seq_len"])
    ):
        tokens += int(batch["attention_mask"].sum())
    Path(config["result"]).write_text(json.dumps({"tokens": tokens, "seconds": time.perf_counter() - t}))


def run_ingest(corpus_dir: Path, batch: int, epochs: int, storage: Path) -> float:
    from ray.train import RunConfig, ScalingConfig

    storage.mkdir(parents=True, exist_ok=True)
    from ray.train.torch import TorchTrainer

    from fs_ray.data.ingest import CorpusDataConfig, PreparedCorpus

    corpus = PreparedCorpus.load(str(corpus_dir))
    trainer = TorchTrainer(
        _ingest_loop,
        train_loop_config={"batch": batch, "seq_len": corpus.seq_len, "result": str(storage / "ingest.json")},
        scaling_config=ScalingConfig(num_workers=1),
        datasets={"train": corpus.dataset()},
        dataset_config=CorpusDataConfig(str(corpus_dir), batch_size=batch, epochs=epochs),
        run_config=RunConfig(name="ingest_bench", storage_path=str(storage)),
    )
    trainer.fit()
    metrics = json.loads((storage / "ingest.json").read_text())
    return metrics["tokens"] / metrics["seconds"]


def mlm_tokens_per_s(shape: str, seq_len: int, batch: int, steps: int = 3) -> float:
    """Tokens/s of forward+backward+AdamW on BertForMaskedLM, one CPU thread, fp32."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    sizes = {
        "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512),
        "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    }[shape]
    torch.set_num_threads(1)
    model = BertForMaskedLM(BertConfig(vocab_size=21128, max_position_embeddings=512, **sizes))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(1000, 20000, (batch, seq_len))
    labels = torch.full_like(ids, -100)
    labels[:, ::7] = ids[:, ::7]
    model(input_ids=ids, labels=labels).loss.backward()  # warm-up
    opt.step()
    t = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
    return steps * batch * seq_len / (time.perf_counter() - t)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data-dir", type=Path, default=Path(os.environ.get("FS_RAY_DATA_DIR", "../shared/data"))
    )
    parser.add_argument("--repeat", type=int, default=1, help="Copies of the inputs (more MB, same content).")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()

    import ray

    work = Path(tempfile.mkdtemp(prefix="fsr_bench"))
    inputs = gather_inputs(args.data_dir, work, args.repeat)
    mb = sum(p.stat().st_size for p in inputs) / 1e6
    print(f"inputs: {len(inputs)} files, {mb:.1f} MB; {args.cpus} CPUs; seq_len {args.seq_len}")

    hf_s, hf_rows = run_datasets(inputs, work / "hf", args.seq_len, args.cpus)
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
    one_s, _ = run_fs_ray(inputs, work / "fs1", args.seq_len, 1)
    two_s, manifest = run_fs_ray(inputs, work / "fs2", args.seq_len, args.cpus)
    docs = manifest["totals"]["documents"]

    print()
    print("| preparation (same work per batch) | wall s | MB/s | docs/s | rows |")
    print("|---|---:|---:|---:|---:|")
    print(
        f"| datasets.map(batched, num_proc={args.cpus}) | {hf_s:.1f} | {mb / hf_s:.2f} | {docs / hf_s:,.0f} | {hf_rows:,} |"
    )
    print(f"| fs_ray, 1 Ray task | {one_s:.1f} | {mb / one_s:.2f} | {docs / one_s:,.0f} | |")
    print(
        f"| fs_ray, {args.cpus} Ray tasks | {two_s:.1f} | {mb / two_s:.2f} | {docs / two_s:,.0f} | {manifest['totals']['rows']:,} |"
    )
    print(
        f"fs_ray / datasets: {hf_s / two_s:.2f}x   fs_ray scaling 1 -> {args.cpus} tasks: {one_s / two_s:.2f}x"
    )

    ingest = run_ingest(work / "fs2", args.batch, epochs=3, storage=work / "runs")
    tiny = mlm_tokens_per_s("tiny", args.seq_len, args.batch)
    base = mlm_tokens_per_s("base", args.seq_len, 8)
    print()
    print("| per Ray Train worker (1 CPU) | tokens/s |")
    print("|---|---:|")
    print(f"| ingest: get_dataset_shard + iter_torch_batches, no work | {ingest:,.0f} |")
    print(f"| consumed: Erlangshen MLM step, tiny (2x128) fp32 | {tiny:,.0f} |")
    print(f"| consumed: Erlangshen MLM step, base (12x768) fp32 | {base:,.0f} |")
    print(
        f"ingest / tiny consumption: {ingest / tiny:.1f}x   ingest / base consumption: {ingest / base:.1f}x"
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
