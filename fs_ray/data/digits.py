"""An image–text set from real scans that ship offline: scikit-learn's UCI handwritten digits.

1,797 real 8×8 scans of handwritten digits (43 writers), each paired with Chinese captions
rendered from templates. Training pairs use :data:`TRAIN_TEMPLATES`; the held-out test images
are paired with :data:`HELDOUT_TEMPLATES` only, so zero-shot evaluation classifies images the
model never saw with prompts it never read (class names :data:`CLASSES` rendered into them)::

    python -m fs_ray.data.digits --out data/image_text/digits              # JSON lines + PNGs
    python -m fs_ray.data.digits --out /tmp/d --formats jsonl parquet webdataset

Writes ``train.jsonl`` (``{"image": "images/0001.png", "text": ..., "label": 3}``),
``test.jsonl`` (each test image × each held-out template), ``images/``, and where asked
``train.parquet`` / ``test.parquet`` (image bytes inline) and ``train-000000.tar`` (WebDataset:
``<key>.png`` + ``<key>.txt`` + ``<key>.cls``). The images are generated, not stored in the repo.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
from typing import Any

import numpy as np

CLASSES = ("零", "一", "二", "三", "四", "五", "六", "七", "八", "九")
# {c}: the Chinese numeral, {d}: the Arabic digit
TRAIN_TEMPLATES = (
    "一张手写数字{c}的图片",
    "数字 {d}",
    "手写的{c}",
    "图中写着数字{c}",
    "一个手写体的{d}",
    "这张扫描件上是{c}",
    "{c}",
)
HELDOUT_TEMPLATES = ("这是数字{c}。", "一幅手写的{c}的照片", "看起来像{c}的手写字")


def caption(template: str, label: int) -> str:
    return template.format(c=CLASSES[label], d=str(label))


def split(n: int, labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test indices (the same for a given seed)."""
    rng = np.random.default_rng(seed)
    test = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        test.extend(idx[: round(len(idx) * test_fraction)].tolist())
    test_idx = np.array(sorted(test))
    train_idx = np.setdiff1d(np.arange(n), test_idx)
    return train_idx, test_idx


def png(image: np.ndarray) -> bytes:
    """An 8×8 scan (0–16 ink) as an 8-bit greyscale PNG, dark ink on white as scanned."""
    from PIL import Image

    pixels = (255 - np.clip(image * 16, 0, 255)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def rows(indices: np.ndarray, labels: np.ndarray, templates: tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        {"image": f"images/{i:04d}.png", "text": caption(t, int(labels[i])), "label": int(labels[i])}
        for i in indices
        for t in templates
    ]


def write_digits(
    out: str, formats: tuple[str, ...] = ("jsonl",), test_fraction: float = 0.2, seed: int = 0, limit: int | None = None
) -> dict[str, Any]:
    """Write the set under ``out``; return counts. ``limit`` keeps the first N scans (tests)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images, digits.target
    if limit:
        images, labels = images[:limit], labels[:limit]
    train_idx, test_idx = split(len(images), labels, test_fraction, seed)
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    encoded = [png(im) for im in images]
    for i, data in enumerate(encoded):
        with open(os.path.join(out, "images", f"{i:04d}.png"), "wb") as f:
            f.write(data)
    splits = {"train": rows(train_idx, labels, TRAIN_TEMPLATES), "test": rows(test_idx, labels, HELDOUT_TEMPLATES)}
    for name, records in splits.items():
        if "jsonl" in formats:
            with open(os.path.join(out, f"{name}.jsonl"), "w", encoding="utf-8") as f:
                for r in records:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
        if "parquet" in formats:
            import pyarrow as pa
            import pyarrow.parquet as pq

            index = [int(r["image"][7:11]) for r in records]
            table = pa.table(
                {
                    "image": pa.array([encoded[i] for i in index], pa.binary()),
                    "text": [r["text"] for r in records],
                    "label": [r["label"] for r in records],
                }
            )
            pq.write_table(table, os.path.join(out, f"{name}.parquet"))
        if "webdataset" in formats:
            with tarfile.open(os.path.join(out, f"{name}-000000.tar"), "w") as tar:
                for k, r in enumerate(records):
                    members = {
                        "png": encoded[int(r["image"][7:11])],
                        "txt": r["text"].encode("utf-8"),
                        "cls": str(r["label"]).encode(),
                    }
                    for ext, data in members.items():
                        info = tarfile.TarInfo(f"{k:06d}.{ext}")
                        info.size = len(data)
                        tar.addfile(info, io.BytesIO(data))
    summary = {
        "images": len(images),
        "train_images": len(train_idx),
        "test_images": len(test_idx),
        "train_pairs": len(splits["train"]),
        "test_pairs": len(splits["test"]),
        "classes": list(CLASSES),
        "train_templates": list(TRAIN_TEMPLATES),
        "heldout_templates": list(HELDOUT_TEMPLATES),
        "formats": list(formats),
    }
    with open(os.path.join(out, "digits.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, ensure_ascii=False, indent=2)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="data/image_text/digits", help="output folder")
    parser.add_argument("--formats", nargs="+", default=["jsonl"], choices=["jsonl", "parquet", "webdataset"])
    parser.add_argument("--test-fraction", type=float, default=0.2, help="share of the scans held out")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stratified split")
    args = parser.parse_args(argv)
    summary = write_digits(args.out, tuple(args.formats), args.test_fraction, args.seed)
    print(
        f"[digits] {summary['train_images']} training scans x {len(TRAIN_TEMPLATES)} templates = "
        f"{summary['train_pairs']} pairs; {summary['test_images']} held-out scans x {len(HELDOUT_TEMPLATES)} "
        f"held-out templates = {summary['test_pairs']} pairs -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
