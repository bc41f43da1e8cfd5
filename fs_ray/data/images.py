"""Image–text pairs through Ray Data: read, decode, resize, crop, tokenize; bad pairs counted and skipped.

Three layouts a user's corpus arrives in, each read by Ray Data:

- ``jsonl``: JSON lines ``{"image": <path or URI>, "text": <caption>}``; a relative image path is
  relative to the JSON file's folder (read as lines, so a malformed line is counted, not fatal);
- ``parquet``: a column of encoded image bytes (or the ``{bytes, path}`` struct Hugging Face
  ``datasets`` writes for its Image feature) and a caption column;
- ``webdataset``: tar shards whose members share a key (``0001.jpg`` + ``0001.txt``), read with
  ``ray.data.read_webdataset`` (no decoder: fs_ray decodes, so a bad image is counted, not fatal).

:class:`PairDecoder` runs in ``map_batches``: it decodes each image (PIL), converts it to RGB,
resizes its shorter side to ``image_size`` (bicubic) and centre-crops it — what CLIP's
preprocessing does — and tokenizes the caption (``[CLS] caption [SEP]``, at most
``max_text_len``). Pixels travel as ``uint8`` (4× less object-store traffic than float32);
:func:`normalize` turns them into CLIP-normalised float tensors on the training worker's device.

A pair that cannot be used is counted by reason (:data:`IMAGE_BAD_REASONS`) in a shared
:class:`~fs_ray.data.corpus.PrepareStats` actor and skipped; past ``max_bad_fraction`` the
decoder raises :class:`~fs_ray.data.corpus.TooManyBadRecords` naming the reasons and examples.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from fs_ray import storage
from fs_ray.assets import resolve_path

# why a pair was skipped
IMAGE_BAD_REASONS = (
    "malformed_json",  # a JSON line that does not parse or is not an object
    "missing_field",  # no image or no caption field
    "unreadable_image",  # the image file is missing or cannot be read
    "not_an_image",  # bytes PIL does not recognise as an image
    "truncated_image",  # an image whose data ends early or is corrupt
    "image_too_large",  # over max_image_mb, or a decompression bomb by pixel count
    "empty_caption",  # a caption that is blank after stripping
)
PAIR_FORMATS = ("jsonl", "parquet", "webdataset")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
CAPTION_EXTENSIONS = ("txt", "caption", "text")
# CLIP's normalisation (openai/clip-vit-base-patch32 preprocessor_config.json)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_PIXELS = 89_478_485  # PIL's own decompression-bomb limit
# leading bytes of PNG, JPEG, GIF, BMP, WebP/RIFF and TIFF files
IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"RIFF", b"II*\x00", b"MM\x00*")


class BadPair(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def detect_pair_format(path: str, configured: str) -> str:
    if configured != "auto":
        return configured
    name = path.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".json", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".tar"):
        return "webdataset"
    raise ValueError(
        f"{path}: format auto knows .jsonl/.json/.ndjson (JSON lines), .parquet and .tar (WebDataset shards); "
        "rename it or set the format"
    )


def expand_pair_files(paths: list[str], fmt: str, field: str = "data.pairs.paths") -> tuple[list[str], str]:
    """Every file the configured paths/dirs/globs name, and their one format."""
    files: list[str] = []
    for spec in paths:
        entries = storage.list_files(resolve_path(spec))
        if not entries:
            raise ValueError(f"{field}: {spec!r} matches no file")
        files.extend(e.path for e in entries if not e.path.endswith((".png", ".jpg", ".jpeg")))
    if not files:
        raise ValueError(f"{field}: {paths} hold only images; name the JSON lines, parquet or tar files")
    formats = {detect_pair_format(f, fmt) for f in files}
    if len(formats) > 1:
        raise ValueError(f"{field}: one format per source, found {sorted(formats)} ({files[:4]})")
    return files, formats.pop()


# ---------------------------------------------------------------------------------------------
# one image
# ---------------------------------------------------------------------------------------------
def load_image(data: bytes, size: int, max_bytes: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """``data`` (an encoded image) as RGB ``uint8`` ``(size, size, 3)``: shorter side resized to
    ``size`` (bicubic), centre crop. Raises :class:`BadPair` naming why it cannot; an image of
    more than ``max_pixels`` is refused from its header, before its pixels are decoded."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > max_bytes:
        raise BadPair("image_too_large", f"{len(data):,} bytes > {max_bytes:,}")
    try:
        img = Image.open(io.BytesIO(data))
        if img.width * img.height > max_pixels:
            raise BadPair("image_too_large", f"{img.width}x{img.height} pixels > {max_pixels:,}")
        img.load()
        img = img.convert("RGB")
        w, h = img.size
        # the longer side truncated, as transformers' CLIP processor computes it (int(size * long / short))
        nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    except BadPair:
        raise
    except UnidentifiedImageError:
        if data.startswith(IMAGE_MAGIC):  # an image's signature, its header cut short or broken
            raise BadPair("truncated_image", "an image signature, then data PIL cannot read") from None
        raise BadPair("not_an_image", "not an image PIL can identify") from None
    except Image.DecompressionBombError as err:
        raise BadPair("image_too_large", str(err)) from None
    except MemoryError:
        raise
    except Exception as err:  # truncated data, broken chunks, bad headers: whatever a decoder raises
        raise BadPair("truncated_image", f"{type(err).__name__}: {err}") from None
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)), dtype=np.uint8)


def normalize(pixels, mean=CLIP_MEAN, std=CLIP_STD):
    """uint8 ``(n, h, w, 3)`` -> float32 ``(n, 3, h, w)`` normalised as CLIP's processor does."""
    import torch

    x = torch.as_tensor(np.asarray(pixels) if not isinstance(pixels, torch.Tensor) else pixels)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


# ---------------------------------------------------------------------------------------------
# a batch of pairs (the map_batches function)
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairSpec:
    """What the decoder needs; picklable."""

    fmt: str
    image_size: int
    max_text_len: int
    tokenizer: str  # tokenizer.source (builtin name, vocab.txt, tokenizer.json or model folder)
    image_field: str = "image"
    text_field: str = "text"
    label_field: str | None = None  # kept as an int column when set (zero-shot evaluation sets)
    max_image_bytes: int = 20 * 2**20
    keep_text: bool = False  # also a ``caption`` column (evaluation: retrieval relevance by text)


@lru_cache(maxsize=4)
def _tokenizer(source: str, max_len: int):
    from fs_ray.data.tokenization import load_tokenizer

    tok = load_tokenizer(source)
    tok.no_padding()
    tok.enable_truncation(max_len)
    return tok


def encode_captions(texts: list[str], source: str, max_len: int) -> dict[str, np.ndarray]:
    """``[CLS] text [SEP]`` ids and attention masks, padded to ``max_len``."""
    tok = _tokenizer(source, max_len)
    pad = tok.token_to_id("[PAD]") or 0
    ids = np.full((len(texts), max_len), pad, dtype=np.int32)
    mask = np.zeros((len(texts), max_len), dtype=np.int8)
    for i, enc in enumerate(tok.encode_batch(texts)):
        n = min(len(enc.ids), max_len)
        ids[i, :n] = enc.ids[:n]
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask}


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray) and value.dtype.kind in "US":
        value = str(value)
    return value if isinstance(value, str) else None


def _image_bytes(ref: Any, base: str | None) -> bytes:
    """Encoded image bytes from a bytes value, a ``{bytes, path}`` struct or a path / URI."""
    if isinstance(ref, dict):
        if ref.get("bytes") is not None:
            return bytes(ref["bytes"])
        ref = ref.get("path")
    if isinstance(ref, bytes | bytearray | memoryview):
        return bytes(ref)
    if not isinstance(ref, str) or not ref:
        raise BadPair("missing_field", "no image")
    path = ref
    if not storage.is_uri(path) and not os.path.isabs(path) and base:
        path = posixpath.join(base, path) if storage.is_uri(base) else os.path.join(base, path)
    try:
        return storage.read_bytes(path)
    except (OSError, ValueError) as err:
        raise BadPair("unreadable_image", f"{path}: {type(err).__name__}: {err}") from None


def _rows(batch: dict[str, np.ndarray], spec: PairSpec):
    """(where, image ref, caption, label) per record of a batch in ``spec.fmt``'s columns."""
    n = len(next(iter(batch.values()))) if batch else 0
    for i in range(n):
        if spec.fmt == "jsonl":
            where = str(batch["path"][i])
            try:
                obj = json.loads(batch["text"][i])
            except (json.JSONDecodeError, TypeError):
                yield where, BadPair("malformed_json", "not JSON"), None, None
                continue
            if not isinstance(obj, dict):
                yield where, BadPair("malformed_json", "not a JSON object"), None, None
                continue
            ref, text = obj.get(spec.image_field), obj.get(spec.text_field)
            label = obj.get(spec.label_field) if spec.label_field else None
            if ref is None or text is None:
                missing = spec.image_field if ref is None else spec.text_field
                yield where, BadPair("missing_field", f"no {missing!r} field"), None, None
                continue
            yield where, (ref, posixpath.dirname(where) if storage.is_uri(where) else os.path.dirname(where)), text, label
        elif spec.fmt == "parquet":
            where = str(batch["path"][i]) if "path" in batch else "parquet"
            if spec.image_field not in batch or spec.text_field not in batch:
                missing = spec.image_field if spec.image_field not in batch else spec.text_field
                yield where, BadPair("missing_field", f"no {missing!r} column"), None, None
                continue
            label = batch[spec.label_field][i] if spec.label_field and spec.label_field in batch else None
            yield where, (batch[spec.image_field][i], None), batch[spec.text_field][i], label
        else:  # webdataset: members by extension
            key = str(batch.get("__key__", ["?"] * n)[i])
            where = f"{batch['__url__'][i]}:{key}" if "__url__" in batch else key
            image = next(
                (batch[e][i] for e in (spec.image_field, *IMAGE_EXTENSIONS) if e in batch and batch[e][i] is not None),
                None,
            )
            text = next(
                (batch[e][i] for e in (spec.text_field, *CAPTION_EXTENSIONS) if e in batch and batch[e][i] is not None),
                None,
            )
            label = None
            if spec.label_field and spec.label_field in batch and batch[spec.label_field][i] is not None:
                label = _as_text(batch[spec.label_field][i])
            if image is None or text is None:
                yield where, BadPair("missing_field", "no image member" if image is None else "no caption member"), None, None
                continue
            yield where, (image, None), text, label


def decode_pairs(batch: dict[str, np.ndarray], spec: PairSpec) -> tuple[dict[str, np.ndarray], Counter, list[dict]]:
    """The usable pairs of ``batch`` as arrays (``pixels`` uint8 NHWC, ``input_ids``,
    ``attention_mask``, ``label`` when asked), the counts by reason, and the bad examples."""
    counts: Counter = Counter()
    bad: list[dict] = []
    pixels, captions, labels = [], [], []
    for i, (where, ref, text, label) in enumerate(_rows(batch, spec)):
        counts["records"] += 1
        try:
            if isinstance(ref, BadPair):
                raise ref
            caption = (_as_text(text) or "").strip()
            if not caption:
                raise BadPair("empty_caption", "empty caption")
            data, base = ref
            image = load_image(_image_bytes(data, base), spec.image_size, spec.max_image_bytes)
        except BadPair as err:
            counts[err.reason] += 1
            bad.append({"file": where, "where": str(err)[:200], "reason": err.reason, "order": (where, i)})
            continue
        pixels.append(image)
        captions.append(caption)
        labels.append(label)
    counts["pairs"] += len(pixels)
    size = spec.image_size
    out = {
        "pixels": np.stack(pixels) if pixels else np.zeros((0, size, size, 3), np.uint8),
        **encode_captions(captions, spec.tokenizer, spec.max_text_len),
    }
    if spec.keep_text:
        out["caption"] = np.array(captions, dtype=object)
    if spec.label_field:
        out["label"] = np.array([int(x) if x is not None else -1 for x in labels], dtype=np.int64)
    return out, counts, bad


class PairDecoder:
    """``map_batches`` function: :func:`decode_pairs` plus the shared counts (``stats``: a
    :class:`~fs_ray.data.corpus.PrepareStats` actor handle, or None to count nothing)."""

    def __init__(self, spec: PairSpec, stats=None, max_bad_fraction: float = 0.05):
        self.spec, self.stats, self.max_bad_fraction = spec, stats, max_bad_fraction

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out, counts, bad = decode_pairs(batch, self.spec)
        if self.stats is not None:
            import ray

            from fs_ray.data.corpus import TooManyBadRecords, bad_fraction_message

            by_file = Counter(f"{b['file']}\t{b['reason']}" for b in bad)
            if ray.get(self.stats.add.remote(dict(counts), bad, dict(by_file))):
                snap = ray.get(self.stats.snapshot.remote())
                raise TooManyBadRecords(
                    bad_fraction_message(
                        snap["counts"], snap["first_bad"], self.max_bad_fraction, snap["bad_by_file"],
                        IMAGE_BAD_REASONS,
                        "data.pairs.max_bad_fraction",
                    )
                )
        return out


def pair_stats(max_bad_fraction: float):
    """A counts actor for :class:`PairDecoder` (bad pairs judged by :data:`IMAGE_BAD_REASONS`)."""
    import ray

    from fs_ray.data.corpus import PrepareStats

    return ray.remote(num_cpus=0)(PrepareStats).remote(max_bad_fraction, IMAGE_BAD_REASONS)


def pair_dataset(
    files: list[str],
    spec: PairSpec,
    stats=None,
    max_bad_fraction: float = 0.05,
    batch_size: int = 64,
    shuffle_seed: int | None = None,
    decode_cpus: float = 1.0,
):
    """The Ray Dataset of decoded pairs from ``files`` (all of ``spec.fmt``); with ``shuffle_seed``
    the files are read in a new seeded order at every execution (epoch)."""
    import ray.data

    shuffle = ray.data.FileShuffleConfig(seed=shuffle_seed) if shuffle_seed is not None else None
    # reading the files is light next to decoding their images: the reads reserve no CPU
    if spec.fmt == "jsonl":
        ds = ray.data.read_text(files, include_paths=True, shuffle=shuffle, num_cpus=0)
    elif spec.fmt == "parquet":
        ds = ray.data.read_parquet(files, include_paths=True, shuffle=shuffle, num_cpus=0)
    else:
        ds = ray.data.read_webdataset(files, decoder=None, include_paths=True, shuffle=shuffle, num_cpus=0)
    return ds.map_batches(
        PairDecoder(spec, stats, max_bad_fraction), batch_size=batch_size, batch_format="numpy", num_cpus=decode_cpus
    )
