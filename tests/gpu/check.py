"""The GPU check: the figures a lent GPU is for, in one run, through fs_ray's own code.

    bash tests/gpu/run.sh                 # on the GPU machine (about 4 minutes on one H200)
    bash tests/gpu/run.sh --dry-run       # anywhere: tiny shapes, a few steps, CPU (the test suite runs it)

Three sections, each printed as it finishes and written to ``<out>/gpu_check.json``:

1. **mlm** — Erlangshen BERT-base (the ``base`` preset, 102M) whole-word MLM at seq 512: fs_ray's
   objective (``get_objective("mlm")``: its masking and its loss, which projects only the masked
   positions onto the vocabulary), fs_ray's DeepSpeed engine (``make_engine``: AdamW, fused on a
   GPU) with ZeRO-1 in bf16, SDPA attention (the attention implementation is printed). Step time
   over the timed steps and **MFU**: model FLOPs of the work done (6 x matmul parameters x tokens
   + 12 x layers x seq x hidden x tokens for attention + 6 x head parameters x masked tokens) per
   second over H200's 989 TFLOP/s dense bf16 (anchors: NVIDIA's BERT about 45% on A100, Megatron
   41-48%).
2. **zero** — the 1.3B preset (MegatronBERT shape) under ZeRO-2 and ZeRO-3: tokens/s and peak
   GPU memory per parameter (ZeRO's model: 16 bytes per parameter with mixed precision on one
   GPU, plus activations).
3. **serve** — a classifier replica's batching ratio on the GPU: ``TaskModel.classify`` (what a
   Serve model replica runs) over the embedded FewCLUE eprstmt reviews one request per forward
   vs. 32 per forward, texts/s and the ratio. Ray is not on the GPU machine (its wheel is past what
   a device call carries), so this times the replica's work, not the HTTP path.

Inputs are random token ids with word starts every 1-3 tokens (jieba's average Chinese word is
about 1.5 characters): the masking, shapes and arithmetic are the real ones, only the text is not.
A single process drives the GPU (torch.distributed with one rank: NCCL on a GPU, gloo on a CPU).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

H200_BF16_DENSE = 989e12  # FLOP/s, NVIDIA's H200 datasheet (dense, no sparsity)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(on_gpu: bool) -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}.items():
        os.environ.setdefault(key, value)
    if on_gpu:
        torch.cuda.set_device(0)
    dist.init_process_group("nccl" if on_gpu else "gloo", rank=0, world_size=1)


def synthetic_batch(batch: int, seq: int, vocab: int, special: dict, gen: torch.Generator) -> dict:
    """Random token ids between [CLS] and [SEP], no padding, word starts every 1-3 tokens."""
    first = max(v for v in special.values() if isinstance(v, int)) + 1
    ids = torch.randint(first, vocab, (batch, seq), generator=gen)
    ids[:, 0], ids[:, -1] = special["cls"], special["sep"]
    starts = torch.zeros(batch, seq, dtype=torch.bool)
    for row in range(batch):
        pos = 0
        while pos < seq:
            starts[row, pos] = True
            pos += int(torch.randint(1, 4, (1,), generator=gen))
    return {"input_ids": ids, "attention_mask": torch.ones(batch, seq, dtype=torch.long), "word_starts": starts}


def matmul_params(model) -> tuple[int, int]:
    """(encoder layer matmul parameters, MLM head matmul parameters) of a BERT-style model."""
    base = getattr(model, model.base_model_prefix)
    layers = sum(p.numel() for n, p in base.encoder.named_parameters() if p.ndim == 2)
    head = sum(p.numel() for n, p in model.cls.named_parameters() if p.ndim == 2)
    decoder = model.get_output_embeddings()
    if decoder is not None and decoder.weight.ndim == 2 and all(decoder.weight is not p for p in model.cls.parameters()):
        head += decoder.weight.numel()  # tied to the word embeddings: not among cls's own parameters
    return layers, head


def train_section(
    preset: str, seq: int, micro: int, zero: int, steps: int, warmup: int, on_gpu: bool, label: str
) -> dict:
    """``steps`` timed optimizer steps (after ``warmup``) of whole-word MLM on ``preset``."""
    from fs_ray.data.tokenization import load_tokenizer, special_ids
    from fs_ray.families import get_family
    from fs_ray.objectives import get_objective
    from fs_ray.run_configs import DeepSpeedSection, OptimSection
    from fs_ray.training.engine import make_engine, resolve_precision
    from fs_ray.training.loop import to_device

    tok = load_tokenizer("bert-chinese")
    special = special_ids(tok).as_dict()
    family = get_family("erlangshen")
    config = family.config(preset, tok.get_vocab_size(with_added_tokens=True), seq, special)
    torch.manual_seed(0)
    model = family.build("AutoModelForMaskedLM", config)
    objective = get_objective("mlm")
    params = sum(p.numel() for p in model.parameters())
    layer_mm, head_mm = matmul_params(model)
    attn = getattr(model.config, "_attn_implementation", None) or "eager"
    precision = "auto"
    optim = OptimSection(lr=1e-4, max_steps=steps + warmup, micro_batch_size=micro, warmup_steps=0)
    ds = DeepSpeedSection(zero_stage=zero, precision=precision)
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    engine = make_engine(objective.wrap(model), optim, ds, 1, on_gpu, steps + warmup)
    gen = torch.Generator().manual_seed(1)
    vocab = config.vocab_size
    batches = [synthetic_batch(micro, seq, vocab, special, gen) for _ in range(min(4, steps + warmup))]
    masked_total, times, losses = 0, [], []
    for i in range(steps + warmup):
        inputs = objective.inputs(batches[i % len(batches)], special, vocab, gen)
        if i >= warmup:
            masked_total += int((inputs["labels"] != -100).sum())
        inputs = to_device(inputs, engine.device)
        if on_gpu:
            torch.cuda.synchronize()
        t = time.perf_counter()
        loss = engine(**inputs)
        engine.backward(loss)
        engine.step()
        if on_gpu:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
            losses.append(float(loss))
    step_s = sum(times) / len(times)
    tokens = micro * seq
    heads = config.num_attention_heads
    layers = config.num_hidden_layers
    hidden = config.hidden_size
    flops = (
        6 * layer_mm * tokens
        + 12 * layers * seq * hidden * tokens  # QK^T and AV, forward and backward
        + 6 * head_mm * masked_total / len(times)
    )
    out = {
        "section": label,
        "preset": preset,
        "parameters": params,
        "seq_len": seq,
        "micro_batch": micro,
        "zero_stage": zero,
        "precision": resolve_precision(precision, on_gpu),
        "attention": attn,
        "heads": heads,
        "timed_steps": len(times),
        "step_s": step_s,
        "tokens_per_s": tokens / step_s,
        "model_tflops_per_s": flops / step_s / 1e12,
        "mfu_vs_h200_bf16": flops / step_s / H200_BF16_DENSE,
        "loss_first": losses[0],
        "loss_last": losses[-1],
    }
    if on_gpu:
        peak = torch.cuda.max_memory_allocated()
        out.update(peak_gib=peak / 2**30, peak_bytes_per_parameter=peak / params)
    del engine, model
    if on_gpu:
        torch.cuda.empty_cache()
    return out


def serve_section(n_texts: int, preset: str, width: int, on_gpu: bool, tmp: Path) -> dict:
    """A fine-tuned classifier export (``preset``) classified one text per forward and ``width``
    per forward, by the class a Serve model replica runs."""
    from fs_ray.assets import asset_path
    from fs_ray.serving.inference import TaskModel
    from tests.model_folders import classifier_folder

    folder = classifier_folder(tmp / "eprstmt", ["负面", "正面"], task="eprstmt", preset=preset, max_len=128)
    model = TaskModel(str(folder))
    lines = asset_path("fewclue/eprstmt/train_few_all.json").read_text(encoding="utf-8").splitlines()
    texts = [json.loads(x)["sentence"] for x in lines if x.strip()]
    texts = (texts * (n_texts // len(texts) + 1))[:n_texts]
    model.classify(texts[:width])  # warm-up: kernels, allocator
    one_by_one = batched = 0.0
    for _ in range(2):  # alternate, so drift hits both
        t = time.perf_counter()
        singles = [model.classify([x])[0] for x in texts]
        one_by_one += time.perf_counter() - t
        t = time.perf_counter()
        grouped = [r for i in range(0, len(texts), width) for r in model.classify(texts[i : i + width])]
        batched += time.perf_counter() - t
    same = sum(a[0] == b[0] for a, b in zip(singles, grouped, strict=True))
    return {
        "section": "serve",
        "preset": preset,
        "device": str(getattr(model, "device", "cpu")),
        "texts": n_texts,
        "batch": width,
        "unbatched_texts_per_s": 2 * n_texts / one_by_one,
        "batched_texts_per_s": 2 * n_texts / batched,
        "batched_over_unbatched": one_by_one / batched,
        "same_labels": same / n_texts,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="Tiny shapes, a few steps, CPU allowed.")
    parser.add_argument("--out", default=os.environ.get("OUT") or "gpu_check_out", help="Folder for gpu_check.json.")
    parser.add_argument("--sections", default="mlm,zero,serve", help="Comma-separated: mlm, zero, serve.")
    args = parser.parse_args(argv)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(wanted) - {"mlm", "zero", "serve"}
    if unknown:
        print(f"error: --sections: unknown {sorted(unknown)} (mlm, zero, serve)", file=sys.stderr)
        return 2
    on_gpu = torch.cuda.is_available()
    if not on_gpu and not args.dry_run:
        print("error: no GPU visible (torch.cuda.is_available() is False); --dry-run runs the check on a CPU",
              file=sys.stderr)  # fmt: skip
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    init_distributed(on_gpu)
    dry = args.dry_run
    env = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if on_gpu else "cpu",
        "dry_run": dry,
    }
    try:
        import deepspeed
        import transformers

        env.update(deepspeed=deepspeed.__version__, transformers=transformers.__version__)
    except ImportError as err:
        print(f"error: {err}: run through tests/gpu/run.sh, which installs what the GPU machine lacks", file=sys.stderr)
        return 2
    print(f"[gpu-check] {json.dumps(env)}", flush=True)
    results: dict = {"env": env, "sections": []}

    def record(item: dict) -> None:
        results["sections"].append(item)
        print(f"[gpu-check] {json.dumps(item)}", flush=True)
        (out / "gpu_check.json").write_text(json.dumps(results, indent=2), encoding="utf-8")

    if "mlm" in wanted:
        shape = ("tiny", 64, 4, 2, 1) if dry else ("base", 512, 32, 20, 5)
        preset, seq, micro, steps, warmup = shape
        record(train_section(preset, seq, micro, 1, steps, warmup, on_gpu, "mlm"))
    if "zero" in wanted:
        preset, seq, micro, steps, warmup = ("small", 64, 2, 2, 1) if dry else ("1.3b", 512, 8, 8, 3)
        for stage in (2, 3):
            record(train_section(preset, seq, micro, stage, steps, warmup, on_gpu, f"zero{stage}"))
    if "serve" in wanted:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            n, preset = (64, "tiny") if dry else (2048, "base")
            record(serve_section(n, preset, 32, on_gpu, Path(tmp)))
    print(f"[gpu-check] wrote {out / 'gpu_check.json'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
