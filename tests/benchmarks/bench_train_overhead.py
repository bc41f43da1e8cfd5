"""Ray Train overhead: the same DeepSpeed step loop under Ray Train (1 worker) vs. a plain process.

    .venv/bin/python tests/benchmarks/bench_train_overhead.py [--preset tiny] [--steps 40] [--batch 32]

Both sides run fs_ray's own model, objective and engine (``fs_ray.families.build_model``, the
``mlm`` objective's transform and loss, ``fs_ray.training.engine.make_engine``: whole-word masking,
masked-only MLM head, DeepSpeed ZeRO-1 over gloo, fp32) for the same
number of steps on the same thread count, after the same warm-up steps:

- **plain**: one Python process, ``torch.distributed`` initialised by hand (world size 1), the
  prepared shards read into memory up front (the ideal data path);
- **Ray Train**: ``TorchTrainer`` with one worker, batches from the real streaming path
  (``CorpusDataConfig`` -> ``get_dataset_shard`` -> ``iter_torch_batches`` + collate).

The per-step time is measured inside the loop, so worker start-up (printed separately) is not
in the ratio; the steady state is what a long pretraining run pays. Target: <= 1.10x.
The two sides alternate ``--rounds`` times so drift on a shared machine hits both.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fs_ray.config import load_config
from fs_ray.run_configs import PretrainConfig

REPO = Path(__file__).resolve().parents[2]
TRAIN_YAML = REPO / "jobs/configs/pretrain_erlangshen_tiny.yaml"


def timed_loop(config: dict, batches) -> dict:
    """The loop both sides run: build the engine, ``warmup`` untimed steps, then ``steps`` timed ones."""
    from fs_ray.families import build_model
    from fs_ray.objectives import get_objective
    from fs_ray.training.engine import make_engine

    torch.set_num_threads(config["threads"])
    cfg = PretrainConfig.model_validate(config["cfg"])
    tok = config["manifest"]["tokenizer"]
    special, vocab = tok["special_ids"], tok["vocab_size"]
    objective = get_objective(cfg.model.objective_name)
    model = build_model(cfg.model, objective.auto_class, vocab, config["manifest"]["seq_len"], special)
    engine = make_engine(objective.wrap(model), cfg.optim, cfg.deepspeed, 1, False, cfg.optim.max_steps)
    times = []
    for step in range(config["warmup"] + config["steps"]):
        t = time.perf_counter()
        batch = next(batches)
        gen = torch.Generator().manual_seed(step)
        loss = engine(**objective.inputs(batch, special, vocab, gen))
        engine.backward(loss)
        engine.step()
        float(loss)
        if step >= config["warmup"]:
            times.append(time.perf_counter() - t)
    return {"step_s": statistics.median(times), "mean_step_s": statistics.fmean(times)}


def ray_worker(config: dict) -> dict:
    import ray.train

    from fs_ray.data.ingest import collate

    seq_len = config["manifest"]["seq_len"]
    batches = iter(
        ray.train.get_dataset_shard("train").iter_torch_batches(
            batch_size=config["batch"], collate_fn=lambda b: collate(b, seq_len=seq_len), prefetch_batches=2
        )
    )
    return timed_loop(config, batches)  # rank 0's return value is Result.return_value


def plain_batches(prepared: str, batch: int, seq_len: int):
    import pyarrow.parquet as pq

    from fs_ray.data.ingest import PreparedCorpus, collate

    corpus = PreparedCorpus.load(prepared)
    tables = [pq.read_table(os.path.join(prepared, s["path"])) for s in corpus.manifest["shards"]]
    cols = {
        c: np.concatenate([t[c].to_numpy(zero_copy_only=False) for t in tables])
        for c in tables[0].column_names
    }
    n = len(cols["input_ids"])
    ready = []
    for i in range(0, n - batch + 1, batch):
        b = {k: v[i : i + batch] for k, v in cols.items()}
        b["sample_id"] = np.arange(i, i + batch)
        ready.append(collate(b, seq_len=seq_len))
    while True:
        yield from ready


def run_plain(config: dict, prepared: str) -> dict:
    """In a fresh process, so both sides start from the same interpreter state."""
    import json

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "WORLD_SIZE": "1"}
    env["LOCAL_RANK"] = "0"
    env["OMP_NUM_THREADS"] = str(config["threads"])
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, __file__, "--plain-child", json.dumps(config), prepared],
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return {**json.loads(line[7:]), "wall_s": time.perf_counter() - t}


def run_ray(config: dict, prepared: str, storage: str, name: str) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from fs_ray.data.ingest import CorpusDataConfig, PreparedCorpus

    corpus = PreparedCorpus.load(prepared)
    t = time.perf_counter()
    result = TorchTrainer(
        ray_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": config["threads"]}),
        datasets={"train": corpus.dataset()},
        dataset_config=CorpusDataConfig(prepared, batch_size=config["batch"], epochs=50),
        run_config=RunConfig(name=name, storage_path=storage),
    ).fit()
    return {**result.return_value, "wall_s": time.perf_counter() - t}


def plain_child(config_json: str, prepared: str) -> None:
    import json

    import torch.distributed as dist

    config = json.loads(config_json)
    dist.init_process_group("gloo")
    out = timed_loop(config, plain_batches(prepared, config["batch"], config["manifest"]["seq_len"]))
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    if sys.argv[1:2] == ["--plain-child"]:
        plain_child(*sys.argv[2:4])
        return
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    import ray

    from fs_ray.data.corpus import prepare
    from fs_ray.data.ingest import PreparedCorpus
    from fs_ray.run_configs import PrepareConfig

    work = Path(tempfile.mkdtemp(prefix="fsr_overhead"))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    prepared = str(work / "prep")
    prepare(
        load_config(PrepareConfig, None, [f"output.dir={prepared}", "pack.seq_len=128"]), log=lambda *_: None
    )
    corpus = PreparedCorpus.load(prepared)
    cfg = load_config(
        PretrainConfig,
        str(TRAIN_YAML),
        [f"model.preset={args.preset}", f"optim.micro_batch_size={args.batch}", "scaling.num_workers=1"],
    )
    config = {
        "cfg": cfg.model_dump(mode="json"),
        "manifest": {k: corpus.manifest[k] for k in ("tokenizer", "seq_len")},
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "threads": args.threads,
    }
    plain, under_ray = [], []
    for r in range(args.rounds):
        plain.append(run_plain(config, prepared))
        under_ray.append(run_ray(config, prepared, str(work / "runs"), f"overhead{r}"))
        print(
            f"round {r}: plain {plain[-1]['step_s'] * 1000:.1f} ms/step, "
            f"Ray Train {under_ray[-1]['step_s'] * 1000:.1f} ms/step",
            flush=True,
        )
    p = statistics.median(x["step_s"] for x in plain)
    q = statistics.median(x["step_s"] for x in under_ray)
    print(
        f"\nErlangshen {args.preset}, seq 128, batch {args.batch}, {args.steps} timed steps after {args.warmup}, "
        f"{args.threads} thread(s), ZeRO-1 over gloo, fp32, {args.rounds} alternating rounds"
    )
    print("| loop | median step (ms) | tokens/s | wall incl. start-up (s) |")
    print("|---|---:|---:|---:|")
    tokens = args.batch * 128
    for label, rows, med in (("plain process", plain, p), ("Ray Train, 1 worker", under_ray, q)):
        wall = statistics.median(x["wall_s"] for x in rows)
        print(f"| {label} | {med * 1000:.1f} | {tokens / med:,.0f} | {wall:.1f} |")
    print(f"Ray Train / plain step time: {q / p:.3f}x (target <= 1.10x)")
    ray.shutdown()


if __name__ == "__main__":
    main()
