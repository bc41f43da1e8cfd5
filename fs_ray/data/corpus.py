"""Corpus preparation on Ray Data: raw Chinese text -> tokenized, packed, sharded parquet.

    read (byte-range chunks of .txt / .jsonl / .gz files, local or object store)
      -> clean (Unicode normalisation, control characters, short/empty, exact duplicates)
      -> tokenize (fast WordPiece/any tokenizer.json) + jieba word-start flags
      -> pack (fixed-length sequences with no padding, or one document per sequence)
      -> write (parquet shards of bounded size, row groups of ``ROW_GROUP_ROWS``) + manifest.json

The per-record functions here are pure and tested without Ray; :func:`prepare` wires them into
one streaming Ray Data pipeline. Malformed records never stop the job: each is counted by reason
(``BAD_REASONS`` for malformed input, ``CLEAN_REASONS`` for cleaning drops) and the first few are
kept with their file and line. Past ``max_bad_fraction`` the job stops and names them.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import math
import os
import re
import threading
import time
import unicodedata
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fs_ray import storage
from fs_ray.assets import resolve_path
from fs_ray.config import write_resolved
from fs_ray.data.manifest import MANIFEST_FORMAT, MANIFEST_NAME, ROW_GROUP_ROWS, SHARDS_SUBDIR, TOKENIZER_FILE
from fs_ray.data.tokenization import (
    SpecialIds,
    WordSegmenter,
    load_tokenizer,
    special_ids,
    tokenizer_json,
    vocab_fingerprint,
)
from fs_ray.run_configs import CleanSection, PackSection, PrepareConfig

BAD_REASONS = ("invalid_utf8", "binary", "malformed_json", "missing_field", "bad_field_type")
CLEAN_REASONS = ("blank_line", "empty", "too_short", "duplicate")
_BINARY_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # C0 controls but tab/newlines
MIN_RECORDS_BEFORE_ABORT = 1000  # judge the bad fraction early only once it means something
EXAMPLES_PER_KIND = 3  # bad records named per (file, reason); the rest of them are counted
FIRST_BAD_KEPT = 60  # named in all


class TooManyBadRecords(RuntimeError):
    """Raised when the malformed-record fraction passes ``max_bad_fraction``."""


class PrepareError(RuntimeError):
    """Inputs or outputs that make the preparation impossible (nothing matched, output exists, ...)."""


# ----------------------------------------------------------------------------------------------
# Inputs and chunks
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputFile:
    path: str
    size: int
    format: str  # "text" | "jsonl"
    compressed: bool


TEXT_EXTENSIONS = (".txt", ".text")
JSONL_EXTENSIONS = (".jsonl", ".json", ".ndjson")


def detect_format(path: str, configured: str) -> tuple[str, bool]:
    """(text | jsonl, gzip-compressed) of one input file. ``auto`` goes by the extension and
    refuses one it does not know rather than read, say, a .csv or .parquet as lines of text."""
    name = path.lower()
    compressed = name.endswith(".gz")
    if compressed:
        name = name[: -len(".gz")]
    if configured != "auto":
        return configured, compressed
    if name.endswith(JSONL_EXTENSIONS):
        return "jsonl", compressed
    if name.endswith(TEXT_EXTENSIONS):
        return "text", compressed
    known = ", ".join((*TEXT_EXTENSIONS, *JSONL_EXTENSIONS))
    raise PrepareError(
        f"input.paths: {path} has an extension input.format auto does not know ({known}, each optionally .gz); "
        "rename it or set input.format: text or jsonl"
    )


def expand_inputs(paths: list[str], fmt: str = "auto") -> list[InputFile]:
    """Every file named by the configured paths/dirs/globs, in a stable order, duplicates once."""
    seen: set[str] = set()
    files: list[InputFile] = []
    for spec in paths:
        entries = storage.list_files(resolve_path(spec))
        if not entries:
            raise PrepareError(f"input.paths: {spec!r} matches no file")
        for e in entries:
            if e.path in seen:
                continue
            seen.add(e.path)
            kind, compressed = detect_format(e.path, fmt)
            files.append(InputFile(e.path, e.size, kind, compressed))
    return files


def plan_chunks(files: list[InputFile], target_chunk_bytes: int) -> list[dict[str, Any]]:
    """Split files into byte ranges read by independent tasks; gzip files are one chunk each.

    A chunk owns every line that *starts* inside ``[start, end)``.
    """
    chunks: list[dict[str, Any]] = []
    for index, f in enumerate(files):
        if f.compressed or f.size <= target_chunk_bytes:
            bounds = [(0, f.size)]
        else:
            n = math.ceil(f.size / target_chunk_bytes)
            step = math.ceil(f.size / n)
            bounds = [(s, min(s + step, f.size)) for s in range(0, f.size, step)]
        for start, end in bounds:
            chunks.append(
                {
                    "chunk": len(chunks),
                    "file_index": index,
                    "path": f.path,
                    "format": f.format,
                    "compressed": f.compressed,
                    "start": start,
                    "end": end,
                    "size": f.size,
                }
            )
    return chunks


def _chunk_lines(chunk: dict[str, Any]) -> tuple[list[bytes], int]:
    """The raw lines a chunk owns (newline ``\\n`` only; U+2028 stays inside records) and bytes read."""
    fs, path = storage.resolve(chunk["path"])
    if chunk["compressed"]:  # one chunk per .gz file, decompressed whole
        with fs.open_input_stream(path, compression=None) as raw:
            data = gzip.decompress(raw.read())
        if data.endswith(b"\n"):
            data = data[:-1]
        return (data.split(b"\n") if data else []), chunk["size"]
    start, end, size = chunk["start"], chunk["end"], chunk["size"]
    with fs.open_input_file(path) as f:

        def next_newline(pos: int) -> int:
            """Index of the first '\\n' at or after pos, or the file size."""
            while pos < size:
                block = f.read_at(min(1 << 16, size - pos), pos)
                if not block:
                    break
                i = block.find(b"\n")
                if i >= 0:
                    return pos + i
                pos += len(block)
            return size

        # a line starts at 0 or right after a newline; ours are those starting in [start, end)
        first = 0 if start == 0 else next_newline(start - 1) + 1
        if first >= end or first >= size:
            return [], 0
        stop = next_newline(end - 1)  # the newline that ends our last line (or EOF)
        data = f.read_at(stop - first, first)
    return data.split(b"\n"), min(stop + 1, size) - first


def _field(obj: Any, names: str | list[str]) -> Any:
    """The value of the first of ``names`` (dotted paths) present in ``obj``."""
    for dotted in [names] if isinstance(names, str) else names:
        node = obj
        for key in dotted.split("."):
            if not isinstance(node, dict) or key not in node:
                break
            node = node[key]
        else:
            return node
    raise KeyError(names)


def parse_line(raw: bytes, fmt: str, text_field: str | list[str]) -> tuple[str | None, str | None]:
    """(text, None) for a usable record, (None, reason) otherwise."""
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    if b"\x00" in raw:
        return None, "binary"
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "invalid_utf8"
    line = line.removeprefix("\ufeff")
    if line and len(_BINARY_CHARS.findall(line)) > 0.1 * len(line):
        return None, "binary"
    if fmt == "text":
        return line, None
    if not line.strip():
        return None, "blank_line"
    try:
        obj = json.loads(line)
    except ValueError:
        return None, "malformed_json"
    try:
        value = _field(obj, text_field)
    except KeyError:
        return None, "missing_field"
    if not isinstance(value, str):
        return None, "bad_field_type"
    return value, None


def read_chunk(chunk: dict[str, Any], text_field: str | list[str]) -> tuple[list[str], Counter, list[dict]]:
    """(texts, reason counts, first bad examples) for one chunk."""
    texts: list[str] = []
    counts: Counter = Counter()
    bad: list[dict] = []
    try:
        lines, nbytes = _chunk_lines(chunk)
    except (OSError, EOFError, zlib.error) as err:  # corrupt .gz, vanished file, ...
        counts["unreadable_file"] += 1
        bad.append(
            {
                "file": chunk["path"],
                "where": f"byte {chunk['start']}",
                "reason": f"unreadable_file ({err})",
                "order": (chunk["chunk"], -1),
            }
        )
        return texts, counts, bad
    exact_lines = chunk["start"] == 0
    named: Counter = Counter()
    for i, raw in enumerate(lines):
        where = f"line {i + 1}" if exact_lines else f"line {i + 1} of the chunk at byte {chunk['start']}"
        text, reason = parse_line(raw, chunk["format"], text_field)
        counts["records"] += 1
        if reason is not None:
            counts[reason] += 1
            if reason in BAD_REASONS and named[reason] < EXAMPLES_PER_KIND:
                named[reason] += 1
                bad.append(
                    {"file": chunk["path"], "where": where, "reason": reason, "order": (chunk["chunk"], i)}
                )
            continue
        texts.append(text)
    counts["bytes"] += nbytes
    if chunk["size"] == 0 and chunk["start"] == 0:
        counts["empty_file"] += 1
    return texts, counts, bad


# ----------------------------------------------------------------------------------------------
# Cleaning
# ----------------------------------------------------------------------------------------------
_SPACE_RUN = re.compile(r"[\s\u3000]+")


# Unicode Cc + Zl + Zp become spaces; Cf (format: zero-width, bidi marks, soft hyphen, BOM, ...)
# vanishes. Spelled out (from unicodedata, Unicode 15) so cleaning runs at regex speed.
_TO_SPACE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_TO_DROP = re.compile(
    "[\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e"
    "\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\U000110bd\U000110cd\U00013430-\U0001343f"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f]"
)


def clean_text(text: str, cfg: CleanSection) -> str:
    """Normalised, printable, single-spaced text (the exact text that gets tokenized)."""
    if cfg.normalize != "none":
        text = unicodedata.normalize(cfg.normalize, text)
    if cfg.strip_control:
        text = _TO_DROP.sub("", _TO_SPACE.sub(" ", text))
        text = _SPACE_RUN.sub(" ", text)
    return text.strip()


def clean_batch(texts: list[str], cfg: CleanSection) -> tuple[list[str], list[int], Counter]:
    """Cleaned texts that survive, the indices they came from, and drop counts."""
    kept: list[str] = []
    index: list[int] = []
    counts: Counter = Counter()
    for i, t in enumerate(texts):
        c = clean_text(t, cfg)
        if not c:
            counts["empty"] += 1
        elif len(c) < cfg.min_chars:
            counts["too_short"] += 1
        else:
            kept.append(c)
            index.append(i)
    return kept, index, counts


def text_hash(text: str) -> int:
    return int.from_bytes(
        hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=True
    )


# ----------------------------------------------------------------------------------------------
# Tokenize + pack
# ----------------------------------------------------------------------------------------------
def id_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


@dataclass
class Packed:
    input_ids: list[np.ndarray]
    word_starts: list[np.ndarray] | None


def pack_documents(
    docs: list[np.ndarray],
    starts: list[np.ndarray] | None,
    pack: PackSection,
    ids: SpecialIds,
    dtype: np.dtype,
) -> Packed:
    """Turn per-document token ids into training sequences of at most ``seq_len`` tokens.

    fixed:    [CLS] d1 [SEP] d2 [SEP] d3 ... cut every seq_len tokens (a document may continue
              into the next sequence); only the batch's last sequence can be shorter.
    document: [CLS] d1 [SEP]; a document longer than a sequence continues in the next one.
    Word-start flags follow the tokens; special tokens count as word starts.
    """
    lead = [] if ids.seq_start is None else [ids.seq_start]
    tail = [] if ids.doc_end is None else [ids.doc_end]
    body = pack.seq_len - len(lead)

    def with_tail(arrs, flags):
        a = [np.concatenate([d.astype(dtype, copy=False), np.asarray(tail, dtype=dtype)]) for d in arrs]
        f = None if flags is None else [np.concatenate([s, np.ones(len(tail), dtype=bool)]) for s in flags]
        return a, f

    def cut(stream: np.ndarray, flags: np.ndarray | None, out_ids, out_flags):
        for s in range(0, len(stream), body):
            piece = stream[s : s + body]
            out_ids.append(np.concatenate([np.asarray(lead, dtype=dtype), piece]))
            if out_flags is not None:
                out_flags.append(np.concatenate([np.ones(len(lead), dtype=bool), flags[s : s + body]]))

    docs_t, starts_t = with_tail(docs, starts)
    out_ids: list[np.ndarray] = []
    out_flags: list[np.ndarray] | None = None if starts is None else []
    if pack.mode == "fixed":
        if docs_t:
            cut(
                np.concatenate(docs_t),
                None if starts_t is None else np.concatenate(starts_t),
                out_ids,
                out_flags,
            )
    else:
        for i, d in enumerate(docs_t):
            cut(d, None if starts_t is None else starts_t[i], out_ids, out_flags)
    return Packed(out_ids, out_flags)


def _list_array(arrays: list[np.ndarray], value_type: pa.DataType) -> pa.ListArray:
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    if arrays:
        np.cumsum([len(a) for a in arrays], out=offsets[1:])
        values = np.concatenate(arrays)
    else:
        values = np.zeros(0)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=value_type))


def packed_table(packed: Packed, dtype: np.dtype) -> pa.Table:
    value_type = pa.uint16() if dtype == np.uint16 else pa.uint32()
    cols = {
        "input_ids": _list_array(packed.input_ids, value_type),
        "n_tokens": pa.array([len(a) for a in packed.input_ids], type=pa.int32()),
    }
    if packed.word_starts is not None:
        cols["word_starts"] = _list_array(packed.word_starts, pa.bool_())
    return pa.table(cols)


@functools.lru_cache(maxsize=4)
def _tokenizer(source: str, lowercase: bool):
    tok = load_tokenizer(source, lowercase)
    return tok, special_ids(tok, source), id_dtype(tok.get_vocab_size(with_added_tokens=True))


def tokenize_and_pack(texts: list[str], cfg: PrepareConfig) -> tuple[pa.Table, int]:
    """One batch of cleaned documents -> packed rows (and the batch's token count without specials)."""
    tok, ids, dtype = _tokenizer(cfg.tokenizer.source, cfg.tokenizer.lowercase)
    encodings = tok.encode_batch(texts, add_special_tokens=False)
    docs = [np.asarray(e.ids, dtype=dtype) for e in encodings]
    starts = None
    if cfg.pack.word_boundaries:
        seg = WordSegmenter()
        starts = [seg.token_word_starts(t, e.offsets) for t, e in zip(texts, encodings, strict=True)]
    packed = pack_documents(docs, starts, cfg.pack, ids, dtype)
    return packed_table(packed, dtype), sum(len(d) for d in docs)


# ----------------------------------------------------------------------------------------------
# The Ray side: stats, dedup, pipeline
# ----------------------------------------------------------------------------------------------
class PrepareStats:
    """Counters shared by every task (a Ray actor); also decides when bad input stops the job."""

    def __init__(self, max_bad_fraction: float, reasons: tuple[str, ...] = BAD_REASONS):
        self.max_bad_fraction = max_bad_fraction
        self.reasons = reasons  # the counts that make a record bad (the rest are kept or cleaned)
        self.counts: Counter = Counter()
        self.first_bad: list[dict] = []
        self.bad_by_file: Counter = Counter()  # "file\treason" -> records
        self.aborted = False

    def add(self, counts: dict[str, int], bad: list[dict] | None = None, by_file: dict | None = None) -> bool:
        """Add counts; returns True when the job must stop."""
        self.counts.update(counts)
        self.bad_by_file.update(by_file or {})
        if bad:
            self.first_bad = keep_bad_examples(self.first_bad + bad)
        if self.counts["records"] >= MIN_RECORDS_BEFORE_ABORT and self.bad_fraction() > self.max_bad_fraction:
            self.aborted = True
        return self.aborted

    def bad_fraction(self) -> float:
        return sum(self.counts[r] for r in self.reasons) / max(1, self.counts["records"])

    def snapshot(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "first_bad": self.first_bad,
            "bad_by_file": dict(self.bad_by_file),
            "aborted": self.aborted,
        }


def _kind(example: dict) -> tuple[str, str]:
    return example["file"], example["reason"].split(" ", 1)[0]


def keep_bad_examples(examples: list[dict]) -> list[dict]:
    """The earliest bad records, at most EXAMPLES_PER_KIND per (file, reason), FIRST_BAD_KEPT in
    all: one junk file cannot crowd out the real errors of another."""
    kept: list[dict] = []
    per: Counter = Counter()
    for b in sorted(examples, key=lambda b: b["order"]):
        if per[_kind(b)] < EXAMPLES_PER_KIND and len(kept) < FIRST_BAD_KEPT:
            per[_kind(b)] += 1
            kept.append(b)
    return kept


class DedupShard:
    """One hash-partition of the exact-duplicate filter (a Ray actor); 8-byte hashes."""

    def __init__(self) -> None:
        self.seen: set[int] = set()

    def check(self, hashes: list[int]) -> list[bool]:
        keep = []
        for h in hashes:
            keep.append(h not in self.seen)
            self.seen.add(h)
        return keep


def bad_fraction_message(
    counts: dict[str, int],
    first_bad: list[dict],
    limit: float,
    bad_by_file: dict[str, int] | None = None,
    reasons: tuple[str, ...] = BAD_REASONS,
    field: str = "max_bad_fraction",
) -> str:
    bad = {r: counts.get(r, 0) for r in reasons if counts.get(r, 0)}
    total = sum(bad.values())
    lines = [
        f"{total} of {counts.get('records', 0)} records are malformed "
        f"({total / max(1, counts.get('records', 0)):.1%} > max_bad_fraction {limit:.1%}): "
        + ", ".join(f"{k} {v}" for k, v in bad.items()),
        "first bad records, by file and reason:",
    ]
    lines += bad_example_lines(first_bad, bad_by_file or {})
    lines.append(f"Fix or remove them, or raise {field.rsplit('.', 1)[-1]} (--set {field}=0.2).")
    return "\n".join(lines)


def bad_example_lines(first_bad: list[dict], bad_by_file: dict[str, int]) -> list[str]:
    """``  file line N: reason`` per named record, then how many more of each kind there are."""
    lines = [f"  {b['file']} {b['where']}: {b['reason']}" for b in first_bad]
    shown = Counter(_kind(b) for b in first_bad)
    for key, n in sorted(bad_by_file.items()):
        file, reason = key.split("\t", 1)
        if n > shown[(file, reason)]:
            lines.append(f"  ... {n - shown[(file, reason)]} more {reason} in {file}")
    return lines


def _process_chunks(batch: dict[str, np.ndarray], cfg: PrepareConfig, stats, dedup) -> pa.Table:
    """Ray Data UDF: chunk descriptors -> packed rows (read, clean, dedup, tokenize, pack)."""
    import ray

    # A task holds one CPU: the tokenizer's own thread pool would only fight the other tasks.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    tables = []
    for k in range(len(batch["chunk"])):
        chunk = {key: (v[k].item() if hasattr(v[k], "item") else v[k]) for key, v in batch.items()}
        texts, counts, bad = read_chunk(chunk, cfg.input.text_field)
        kept, _idx, drop = clean_batch(texts, cfg.clean)
        counts.update(drop)
        if dedup is not None and kept:
            hashes = [text_hash(t) for t in kept]
            parts: dict[int, list[int]] = {}
            for i, h in enumerate(hashes):
                parts.setdefault(h % len(dedup), []).append(i)
            keep = np.ones(len(kept), dtype=bool)
            answers = ray.get([dedup[p].check.remote([hashes[i] for i in idx]) for p, idx in parts.items()])
            for (_p, idx), ans in zip(parts.items(), answers, strict=True):
                keep[idx] = ans
            counts["duplicate"] += int((~keep).sum())
            kept = [t for t, k in zip(kept, keep, strict=True) if k]
        for s in range(0, len(kept), cfg.batch_docs):
            table, n = tokenize_and_pack(kept[s : s + cfg.batch_docs], cfg)
            tables.append(table)
            counts["tokens"] += n
            counts["rows"] += table.num_rows
        counts["docs"] += len(kept)
        counts["chars"] += sum(len(t) for t in kept)
        by_file = {f"{chunk['path']}\t{r}": counts[r] for r in (*BAD_REASONS, "unreadable_file") if counts[r]}
        if ray.get(stats.add.remote(dict(counts), bad, by_file)):
            snap = ray.get(stats.snapshot.remote())
            raise TooManyBadRecords(
                bad_fraction_message(
                    snap["counts"], snap["first_bad"], cfg.max_bad_fraction, snap["bad_by_file"]
                )
            )
    if not tables:
        return packed_table(
            Packed([], [] if cfg.pack.word_boundaries else None),
            _tokenizer(cfg.tokenizer.source, cfg.tokenizer.lowercase)[2],
        )
    return pa.concat_tables(tables)


def rows_per_shard(cfg: PrepareConfig, dtype: np.dtype) -> int:
    per_row = (
        cfg.pack.seq_len * dtype.itemsize + (cfg.pack.seq_len // 8 + 1 if cfg.pack.word_boundaries else 0) + 4
    )
    rows = int(cfg.output.shard_max_mb * 1e6 // per_row)
    return max(ROW_GROUP_ROWS, rows // ROW_GROUP_ROWS * ROW_GROUP_ROWS)


def _fmt_count(n: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def progress_line(counts: dict[str, int], elapsed: float, total_bytes: int) -> str:
    b = counts.get("bytes", 0)
    drops = {r: counts[r] for r in (*CLEAN_REASONS, *BAD_REASONS) if counts.get(r)}
    eta = ""
    if b and total_bytes and b < total_bytes:
        eta = f"  ETA {(total_bytes - b) / (b / elapsed):.0f}s"
    return (
        f"[prepare] {elapsed:6.1f}s  {100 * b / max(1, total_bytes):5.1f}%  docs {_fmt_count(counts.get('docs', 0))} "
        f"({counts.get('docs', 0) / max(elapsed, 1e-9):,.0f}/s)  {b / 1e6 / max(elapsed, 1e-9):.2f} MB/s  "
        f"tokens {_fmt_count(counts.get('tokens', 0))}  dropped {sum(drops.values())}"
        + (" (" + ", ".join(f"{k} {v}" for k, v in drops.items()) + ")" if drops else "")
        + eta
    )


def prepare(cfg: PrepareConfig, log=print) -> dict[str, Any]:
    """Run the whole pipeline on the current Ray cluster; returns the manifest.

    Raises :class:`PrepareError` before any work for unusable inputs/outputs, and
    :class:`TooManyBadRecords` when malformed records pass the configured fraction
    (shards may be partly written, but no manifest is, so training refuses them).
    """
    import ray

    out = resolve_path(cfg.output.dir)
    manifest_path = storage.join(out, MANIFEST_NAME)
    if storage.exists(out) and (storage.is_dir(out) and storage.list_files(out)):
        if not cfg.output.overwrite:
            what = "a prepared corpus" if storage.exists(manifest_path) else "files (an unfinished run?)"
            raise PrepareError(
                f"output.dir {out} already holds {what}; use --set output.overwrite=true to replace it"
            )
        storage.remove_tree(out)
    tok, ids, dtype = _tokenizer(cfg.tokenizer.source, cfg.tokenizer.lowercase)  # fail early on a bad vocab
    files = expand_inputs(cfg.input.paths, cfg.input.format)
    total_bytes = sum(f.size for f in files)

    if not ray.is_initialized():
        ray.init(log_to_driver=True)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    parallel = cfg.concurrency or cpus
    # ~4 chunks per task slot: a short tail without paying per-task overhead too often; <= 64 MB
    target = int(min(64 << 20, max(256 << 10, total_bytes / (parallel * 4) if total_bytes else 1)))
    chunks = plan_chunks(files, target)
    log(
        f"[prepare] {len(files)} files, {total_bytes / 1e6:.1f} MB in {len(chunks)} chunks, "
        f"{parallel} parallel tasks, tokenizer {cfg.tokenizer.source} (vocab {tok.get_vocab_size(with_added_tokens=True)}, "
        f"{dtype.name}), pack {cfg.pack.mode}/{cfg.pack.seq_len} -> {out}"
    )

    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.execution_options.preserve_order = True  # shards in input order: reproducible, resumable
    ctx.enable_progress_bars = False

    stats = ray.remote(num_cpus=0)(PrepareStats).remote(cfg.max_bad_fraction)
    # one hash partition per 8 CPUs: enough to keep up with the tokenizers, few processes on a laptop
    dedup = (
        [ray.remote(num_cpus=0)(DedupShard).remote() for _ in range(max(1, cpus // 8))]
        if cfg.clean.dedup
        else None
    )
    ds = ray.data.from_items(chunks, override_num_blocks=len(chunks))
    ds = ds.map_batches(
        _process_chunks,
        batch_size=1,
        batch_format="numpy",
        fn_kwargs={"cfg": cfg, "stats": stats, "dedup": dedup},
        compute=None if cfg.concurrency is None else ray.data.TaskPoolStrategy(size=parallel),
    )
    shard_rows = rows_per_shard(cfg, dtype)
    shards_dir = storage.join(out, SHARDS_SUBDIR)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            ds.write_parquet(
                shards_dir,
                max_rows_per_file=shard_rows,
                concurrency=cfg.concurrency,  # same strategy as the map, so Ray fuses them into one task
                row_group_size=ROW_GROUP_ROWS,
                compression="zstd",
            )
        except BaseException as err:  # surfaced on the driver below
            errors.append(err)

    started = time.monotonic()
    writer = threading.Thread(target=write, name="fs_ray-prepare-write", daemon=True)
    writer.start()
    while writer.is_alive():
        writer.join(timeout=cfg.progress_every_s)
        snap = ray.get(stats.snapshot.remote())
        log(progress_line(snap["counts"], time.monotonic() - started, total_bytes))
    elapsed = time.monotonic() - started
    snap = ray.get(stats.snapshot.remote())
    counts = snap["counts"]
    if errors:
        if snap["aborted"]:
            raise TooManyBadRecords(
                bad_fraction_message(counts, snap["first_bad"], cfg.max_bad_fraction, snap["bad_by_file"])
            )
        raise errors[0]
    bad_total = sum(counts.get(r, 0) for r in BAD_REASONS)
    if bad_total / max(1, counts.get("records", 0)) > cfg.max_bad_fraction:
        raise TooManyBadRecords(
            bad_fraction_message(counts, snap["first_bad"], cfg.max_bad_fraction, snap["bad_by_file"])
        )

    manifest = build_manifest(
        cfg, out, shards_dir, tok, ids, dtype, counts, snap["first_bad"], files, elapsed, snap["bad_by_file"]
    )
    storage.write_text(storage.join(out, TOKENIZER_FILE), tokenizer_json(tok))

    write_resolved(cfg, out)
    storage.write_text(manifest_path, json.dumps(manifest, indent=2, ensure_ascii=False))
    return manifest


def build_manifest(
    cfg, out, shards_dir, tok, ids, dtype, counts, first_bad, files, elapsed, bad_by_file=None
) -> dict[str, Any]:
    fs, _ = storage.resolve(shards_dir)
    # Ray names files <dataset>_<task:06>-<n>.parquet; sort numbers as numbers to keep data order
    shard_files = sorted(
        (e.path for e in storage.list_files(shards_dir) if e.path.endswith(".parquet")),
        key=lambda p: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", p)],
    )
    shards = []
    total_rows = total_tokens = 0
    for path in shard_files:
        _, p = storage.resolve(path)
        pf = pq.ParquetFile(p, filesystem=fs)
        tokens = int(pq.read_table(p, columns=["n_tokens"], filesystem=fs)["n_tokens"].to_numpy().sum())
        groups = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
        rel = (
            path[len(shards_dir.rstrip("/")) + 1 :]
            if path.startswith(shards_dir.rstrip("/"))
            else path.rsplit("/", 1)[-1]
        )
        shards.append(
            {
                "path": f"{SHARDS_SUBDIR}/{rel}",
                "rows": pf.metadata.num_rows,
                "tokens": tokens,
                "row_groups": groups,
            }
        )
        total_rows += pf.metadata.num_rows
        total_tokens += tokens
    dropped = {r: counts.get(r, 0) for r in (*CLEAN_REASONS,) if counts.get(r, 0)}
    bad = {r: counts.get(r, 0) for r in BAD_REASONS if counts.get(r, 0)}
    vocab = tok.get_vocab_size(with_added_tokens=True)
    return {
        "format": MANIFEST_FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "config": cfg.model_dump(mode="json"),
        "tokenizer": {
            "source": cfg.tokenizer.source,
            "file": TOKENIZER_FILE,
            "vocab_size": vocab,
            "fingerprint": vocab_fingerprint(tok),
            "lowercase": cfg.tokenizer.lowercase,
            "special_ids": ids.as_dict(),
        },
        "dtype": dtype.name,
        "seq_len": cfg.pack.seq_len,
        "pack_mode": cfg.pack.mode,
        "word_boundaries": cfg.pack.word_boundaries,
        "row_group_rows": ROW_GROUP_ROWS,
        "shards": shards,
        "totals": {
            "files": len(files),
            "empty_files": counts.get("empty_file", 0),
            "unreadable_files": counts.get("unreadable_file", 0),
            "bytes_read": counts.get("bytes", 0),
            "records": counts.get("records", 0),
            "documents": counts.get("docs", 0),
            "chars": counts.get("chars", 0),
            "doc_tokens": counts.get("tokens", 0),
            "rows": total_rows,
            "tokens": total_tokens,
        },
        "dropped": dropped,
        "bad": bad,
        "bad_fraction": sum(bad.values()) / max(1, counts.get("records", 0)),
        "first_bad": [{k: v for k, v in b.items() if k != "order"} for b in first_bad],
        "bad_by_file": [
            {"file": k.split("\t", 1)[0], "reason": k.split("\t", 1)[1], "records": n}
            for k, n in sorted((bad_by_file or {}).items())
        ],
        "elapsed_s": round(elapsed, 2),
        "mb_per_s": round(counts.get("bytes", 0) / 1e6 / max(elapsed, 1e-9), 3),
    }


def summary(manifest: dict[str, Any]) -> str:
    t = manifest["totals"]
    lines = [
        f"prepared {t['documents']:,} documents ({t['bytes_read'] / 1e6:.1f} MB, {t['files']} files) into "
        f"{t['rows']:,} sequences of <= {manifest['seq_len']} tokens ({t['tokens']:,} tokens, {manifest['dtype']}) "
        f"in {len(manifest['shards'])} shards, {manifest['elapsed_s']:.1f}s ({manifest['mb_per_s']:.2f} MB/s)",
    ]
    drops = {**manifest["dropped"], **manifest["bad"]}
    if t["empty_files"]:
        drops["empty_file"] = t["empty_files"]
    if t["unreadable_files"]:
        drops["unreadable_file"] = t["unreadable_files"]
    if drops:
        lines.append("dropped by reason: " + ", ".join(f"{k} {v:,}" for k, v in drops.items()))
    else:
        lines.append("dropped by reason: none")
    by_file = {f"{b['file']}\t{b['reason']}": b["records"] for b in manifest.get("bad_by_file", [])}
    lines += bad_example_lines(manifest["first_bad"], by_file)
    return "\n".join(lines)
