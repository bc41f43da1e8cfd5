"""Image pipeline throughput (decode + resize + crop + tokenize, per CPU) against what one training
worker consumes, side by side in one run. Run by hand:

    python tests/benchmarks/bench_images.py                 # digits (8x8 PNG -> 16 px) and photos (-> 224 px)
    python tests/benchmarks/bench_images.py --steps 30      # more training steps timed

Rows:
- ``decode``: :func:`fs_ray.data.images.decode_pairs` in this process (one core), images/s;
- ``ray data``: the same through ``pair_dataset`` on a 1-CPU local Ray (read + map_batches +
  iteration; the second pass over the file, after one that starts Ray Data's workers), images/s;
- ``train``: one worker's consumption, pairs/s, of a Taiyi forward + backward + AdamW step in
  this process (fp32, one core), for the ``tiny`` preset on 16 px digits and the ``102m`` preset
  on 224 px photos (what a decode core must keep up with).
The ratio decode/train says how many decoding cores one training worker needs at that shape.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time

import numpy as np
import torch


def _photo_set(folder: str, n: int) -> str:
    """``n`` real photos (scikit-learn's two sample JPEGs, re-encoded with crops) as JSON lines."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    photos = [load_sample_image("china.jpg"), load_sample_image("flower.jpg")]
    os.makedirs(os.path.join(folder, "img"), exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        p = photos[i % 2]
        top, left = int(rng.integers(0, 60)), int(rng.integers(0, 100))
        buf = io.BytesIO()
        Image.fromarray(p[top : top + 360, left : left + 520]).save(buf, format="JPEG", quality=90)
        with open(os.path.join(folder, "img", f"{i}.jpg"), "wb") as f:
            f.write(buf.getvalue())
        lines.append(json.dumps({"image": f"img/{i}.jpg", "text": "一张风景照片" if i % 2 else "一朵花"}, ensure_ascii=False))
    path = os.path.join(folder, "photos.jsonl")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _decode_rate(path: str, spec, repeat: int = 1) -> float:
    from fs_ray.data.images import decode_pairs

    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    batch = {"text": np.array(lines, dtype=object), "path": np.array([path] * len(lines), dtype=object)}
    decode_pairs({k: v[:8] for k, v in batch.items()}, spec)  # tokenizer loaded, caches warm
    t0 = time.perf_counter()
    n = 0
    for _ in range(repeat):
        for i in range(0, len(lines), 64):
            out, _, _ = decode_pairs({k: v[i : i + 64] for k, v in batch.items()}, spec)
            n += len(out["pixels"])
    return n / (time.perf_counter() - t0)


def _ray_rate(path: str, spec) -> float:
    import ray

    from fs_ray.data.images import pair_dataset

    ds = pair_dataset([path], spec, decode_cpus=1)
    for _ in ds.iter_batches(batch_size=64, batch_format="numpy"):
        pass  # a first pass starts the worker processes and loads the tokenizer there
    t0 = time.perf_counter()
    n = sum(len(b["pixels"]) for b in ds.iter_batches(batch_size=64, batch_format="numpy"))
    rate = n / (time.perf_counter() - t0)
    del ray
    return rate


def _train_rate(preset: str, image_size: int, batch: int, steps: int) -> float:
    from fs_ray.families import get_family
    from fs_ray.objectives import get_objective

    family, objective = get_family("taiyi"), get_objective("contrastive")
    torch.manual_seed(0)
    model = family.build(objective.auto_class, family.config(preset, 21128, 32, {"pad": 0}))
    module = objective.wrap(model)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    data = {
        "input_ids": torch.randint(200, 8000, (batch, 16)),
        "attention_mask": torch.ones(batch, 16, dtype=torch.long),
        "pixels": torch.randint(0, 256, (batch, image_size, image_size, 3), dtype=torch.uint8),
    }
    inputs = objective.inputs(data, {}, 0, None)
    for i in range(steps + 1):
        if i == 1:
            t0 = time.perf_counter()
        loss = module(**inputs)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return batch * steps / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="training steps timed per row")
    parser.add_argument("--photos", type=int, default=1024, help="photos in the 224 px set")
    args = parser.parse_args()
    torch.set_num_threads(1)

    import ray

    from fs_ray.data import digits
    from fs_ray.data.images import PairSpec
    from fs_ray.local_cluster import ensure_token

    tmp = tempfile.mkdtemp(prefix="fs_ray_bench_images_")
    digits.write_digits(tmp, ("jsonl",))
    photos = _photo_set(tmp, args.photos)
    shapes = [
        ("digits 8x8 PNG -> 16 px", os.path.join(tmp, "train.jsonl"), PairSpec("jsonl", 16, 16, "bert-chinese"), "tiny", 64),
        ("photos 520x360 JPEG -> 224 px", photos, PairSpec("jsonl", 224, 32, "bert-chinese"), "102m", 32),
    ]
    ensure_token()
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        for name, path, spec, preset, batch in shapes:
            decode = _decode_rate(path, spec)
            through_ray = _ray_rate(path, spec)
            train = _train_rate(preset, spec.image_size, batch, args.steps)
            rows.append((name, decode, through_ray, preset, train))
    finally:
        ray.shutdown()
    print(f"torch {torch.__version__}, 1 thread; {os.cpu_count()} cores on the machine")
    print("| images | decode, 1 core (img/s) | Ray Data, 1 CPU (img/s) | one worker trains (preset, pairs/s) | decode / train |")
    print("|---|---:|---:|---:|---:|")
    for name, decode, through_ray, preset, train in rows:
        print(f"| {name} | {decode:,.0f} | {through_ray:,.0f} | {preset}: {train:,.1f} | {decode / train:,.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
