"""Continue pretraining the released Erlangshen-MegatronBert-1.3B layout with ZeRO-3 + CPU offload,
export it, and measure each worker's peak resident memory against ZeRO's bytes-per-parameter model
(by hand, not in CI).

    .venv/bin/python tests/benchmarks/bench_megatron_1p3b.py [--layers 24] [--workers 2] [--steps 3]

1. builds the released layout with random weights at the real shape (MegatronBertForMaskedLM,
   hidden 2048, 24 layers, 8 heads, FFN 8192, ``gelu_new``, a 21,248-entry ``vocab.txt``:
   1,257M parameters), ``--layers`` fewer for a smaller machine (same width);
2. prepares a corpus with the folder's own tokenizer (``tokenizer.source=<folder>``), then runs
   ``jobs/pretrain.py``'s code path: ``model.from_pretrained=<folder>`` on ``--workers`` Ray Train
   workers, ZeRO-3 with optimizer and parameter offload, fp32 (CPU), ``--steps`` steps;
3. samples every Ray Train worker's RSS (and USS) every 0.2 s from outside, and the driver's;
4. the job exports the last checkpoint (the ZeRO-3 shards merged) and verifies it against the
   logits the workers computed; the export is reloaded with ``transformers`` and checked again.

ZeRO's model (Rajbhandari et al. 2020, Fig. 1 with K=12): 16 bytes per parameter with mixed
precision (2 fp16 params + 2 fp16 grads + 12 fp32 optimizer: master copy, Adam m, v), split over
N workers under ZeRO-3. In fp32 (this CPU) DeepSpeed keeps 24: parameters 4, an fp32 master
partition 4, gradients twice (their partition and the fp32 copy CPU Adam steps) 8, Adam m and v 8.
Run it at two ``--layers`` values: the slope is the bytes per parameter, the intercept the fixed
cost of a worker (Ray, torch, gloo, DeepSpeed's buffers).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

from fs_ray.assets import BUILTIN_VOCABS, DEMO_CORPUS
from fs_ray.config import load_config
from fs_ray.run_configs import PrepareConfig, PretrainConfig

RELEASED_VOCAB = 21248  # Erlangshen-MegatronBert-1.3B's vocab.txt


class MemorySampler(threading.Thread):
    """Peak RSS/USS of every Ray Train worker process (by process title) and of this driver."""

    def __init__(self, every_s: float = 0.2):
        super().__init__(daemon=True)
        self.every_s = every_s
        self.peak_rss: dict[int, int] = {}
        self.peak_uss: dict[int, int] = {}
        self.driver_peak = 0
        self.system_peak = 0
        self.timeline: dict[int, list[tuple[float, int]]] = {}  # pid -> (seconds, rss)
        self._halt = threading.Event()

    def run(self) -> None:
        me = psutil.Process()
        while not self._halt.is_set():
            for p in psutil.process_iter(["pid", "cmdline"]):
                cmd = p.info["cmdline"] or []
                if cmd and cmd[0].startswith("ray::RayTrainWorker"):
                    try:
                        full = p.memory_full_info()
                    except (psutil.NoSuchProcess, psutil.AccessDenied):
                        continue
                    self.peak_rss[p.pid] = max(self.peak_rss.get(p.pid, 0), full.rss)
                    self.timeline.setdefault(p.pid, []).append((time.monotonic(), full.rss))
                    self.peak_uss[p.pid] = max(self.peak_uss.get(p.pid, 0), full.uss)
            self.driver_peak = max(self.driver_peak, me.memory_info().rss)
            vm = psutil.virtual_memory()
            self.system_peak = max(self.system_peak, vm.total - vm.available)
            time.sleep(self.every_s)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)


def build_layout(out: Path, layers: int) -> tuple[Path, int]:
    """The released folder: config.json + model.safetensors + vocab.txt (21,248 entries)."""
    from transformers import MegatronBertConfig, MegatronBertForMaskedLM

    from fs_ray.families import get_family

    out.mkdir(parents=True, exist_ok=True)
    vocab = BUILTIN_VOCABS["bert-chinese"].read_text(encoding="utf-8").splitlines()
    vocab += [f"[unused{100 + i}]" for i in range(RELEASED_VOCAB - len(vocab))]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    shape = dict(get_family("erlangshen").presets["1.3b"].shape)
    shape.pop("architecture")
    shape["num_hidden_layers"] = layers
    config = MegatronBertConfig(pad_token_id=0, max_position_embeddings=512, **shape)
    torch.manual_seed(0)
    model = MegatronBertForMaskedLM(config)
    n = model.num_parameters()
    model.save_pretrained(out, safe_serialization=True)
    del model
    return out, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=24, help="transformer layers (24 = the released 1.3B)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--timeline", action="store_true", help="print one worker's RSS every 5 s")
    ap.add_argument("--out", default=None, help="working folder (default: a temporary one)")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    from fs_ray.data.corpus import prepare
    from fs_ray.local_cluster import ensure_token
    from fs_ray.training.pretrain import pretrain

    root = Path(args.out or tempfile.mkdtemp(prefix="bench_1p3b_"))
    t0 = time.monotonic()
    folder, n_params = build_layout(root / "Erlangshen-MegatronBert-1.3B", args.layers)
    print(f"layout: {n_params / 1e6:,.0f}M parameters ({args.layers} layers) in {time.monotonic() - t0:.0f}s -> {folder}")

    ensure_token()
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False)
    src = root / "docs.txt"
    src.write_text("\n".join(DEMO_CORPUS.read_text(encoding="utf-8").split("\n")[:400]), encoding="utf-8")
    prep = load_config(
        PrepareConfig,
        None,
        [f"input.paths=[{src}]", f"output.dir={root / 'prepared'}", f"pack.seq_len={args.seq_len}",
         f"tokenizer.source={folder}"],
    )  # fmt: skip
    prepare(prep, log=lambda *_: None)
    cfg = load_config(
        PretrainConfig,
        None,
        [
            f"data.prepared_dir={root / 'prepared'}",
            f"model.from_pretrained={folder}",
            f"run.storage_path={root / 'runs'}",
            "run.name=megatron-1.3b",
            f"optim.max_steps={args.steps}",
            "optim.micro_batch_size=1",
            "optim.lr=1e-5",
            f"checkpoint.every_n_steps={args.steps}",
            "checkpoint.keep_last=1",
            "deepspeed.zero_stage=3",
            "deepspeed.offload_optimizer=true",
            "deepspeed.offload_params=true",
            f"scaling.num_workers={args.workers}",
            "scaling.cpus_per_worker=1",
        ],
    )
    sampler = MemorySampler()
    sampler.start()
    t = time.monotonic()
    summary = pretrain(cfg, log=print)
    train_s = time.monotonic() - t
    sampler.stop()
    ray.shutdown()

    from transformers import AutoModelForMaskedLM

    export = summary["export"]
    record = json.loads(Path(export, "fs_ray_export.json").read_text(encoding="utf-8"))
    reloaded = AutoModelForMaskedLM.from_pretrained(export)
    assert reloaded.num_parameters() == n_params

    gib = 2**30
    per_worker = sorted(sampler.peak_rss.values(), reverse=True)[: args.workers]
    uss = sorted(sampler.peak_uss.values(), reverse=True)[: args.workers]
    # fp32 as DeepSpeed's ZeRO-3 + CPU Adam keeps it (measured in one process: 24.9 B/param):
    # params 4 + fp32 master partition 4 + gradients twice (partition + fp32 copy for CPU Adam) 8 + Adam m, v 8
    fp32_model = n_params * 24 / args.workers
    mixed_model = n_params * 16 / args.workers
    print()
    print(f"parameters                       {n_params:,}")
    print(f"workers x steps                  {args.workers} x {args.steps} (ZeRO-3, optimizer + params offloaded, fp32)")
    print(f"train + export wall time         {train_s:.0f}s (loss {summary['metrics'].get('loss', float('nan')):.3f})")
    print(f"export verified (max |dlogit|)   {record['verified_max_abs_logit_diff']:.2e}")
    for i, (r, u) in enumerate(zip(per_worker, uss, strict=False)):
        print(f"worker {i} peak RSS / USS          {r / gib:.2f} / {u / gib:.2f} GiB  = {r / n_params:.1f} B/param")
    print(f"driver peak RSS (incl. export)   {sampler.driver_peak / gib:.2f} GiB")
    print(f"machine peak used                {sampler.system_peak / gib:.2f} of {psutil.virtual_memory().total / gib:.1f} GiB")
    print(f"ZeRO model, mixed precision      16 B/param / {args.workers} = {mixed_model / gib:.2f} GiB per worker")
    print(f"ZeRO model, fp32 as DeepSpeed    24 B/param / {args.workers} = {fp32_model / gib:.2f} GiB per worker")
    if per_worker:
        print(f"measured / fp32 model            {per_worker[0] / fp32_model:.2f}x")
    if args.timeline:  # one worker's RSS over its life, every ~5 s
        series = max(sampler.timeline.values(), key=len)
        t0, last = series[0][0], -10.0
        for t, r in series:
            if t - last >= 5:
                print(f"  t={t - t0:6.1f}s  rss {r / gib:.2f} GiB")
                last = t


if __name__ == "__main__":
    main()
