"""Contrastive image–text pretraining (Taiyi): pairs streamed through Ray Data into the one worker loop.

:func:`pretrain_pairs` is what ``jobs/pretrain.py`` runs when the objective trains on pairs
(``model.objective: contrastive``, ``data.pairs``): the plan checks the config, the files and a
first sample of pairs on the driver before any worker starts; the pairs are decoded and
tokenized in Ray Data tasks (:mod:`fs_ray.data.images`) and split equally over the Ray Train
workers; every worker computes the loss against the whole global batch (features all-gathered).
Checkpoints, restarts and export are the loop's (:mod:`fs_ray.training.loop`). After export the
model is scored on ``data.zero_shot``: zero-shot classification (class names rendered into the
prompt templates, text embeddings averaged per class) and image↔text retrieval Recall@1/5/10.

Resume restores the weights, optimizer, step and the data epoch; inside an epoch a restarted
worker skips as many of its batches as were trained (Ray Data's streaming order within an epoch
is not reproduced pair for pair).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np

from fs_ray import storage
from fs_ray.assets import absolute
from fs_ray.config import write_resolved
from fs_ray.data.images import (
    IMAGE_BAD_REASONS,
    PairSpec,
    decode_pairs,
    expand_pair_files,
    pair_dataset,
    pair_stats,
)
from fs_ray.objectives import get_objective
from fs_ray.run_configs import PairSource, PretrainConfig, ZeroShotSection
from fs_ray.training.engine import deepspeed_config, model_width, resolve_precision
from fs_ray.training.loop import fit
from fs_ray.training.pretrain import PretrainWork

SAMPLE_RECORDS = 64  # pairs the plan decodes on the driver before asking for workers


class PairsError(RuntimeError):
    """A run that cannot start; the message names the field or file to fix."""


def _model_config(cfg: PretrainConfig, vocab_size: int, pad: int):
    from fs_ray.families import get_family

    if cfg.model.from_pretrained:
        from transformers import AutoConfig

        from fs_ray.models import register
        from fs_ray.pretrained import resolve

        register()
        return AutoConfig.from_pretrained(resolve(cfg.model.from_pretrained))
    return get_family(cfg.model.family).config(
        cfg.model.preset, vocab_size, cfg.data.pairs.max_text_len, {"pad": pad}, cfg.model.overrides
    )


def pair_spec(source: PairSource, fmt: str, image_size: int, tokenizer: str, label_field: str | None = None) -> PairSpec:
    return PairSpec(
        fmt=fmt,
        image_size=image_size,
        max_text_len=source.max_text_len,
        tokenizer=tokenizer,
        image_field=source.image_field,
        text_field=source.text_field,
        label_field=label_field,
        max_image_bytes=int(source.max_image_mb * 2**20),
    )


def sample_batch(files: list[str], fmt: str, n: int = SAMPLE_RECORDS) -> dict[str, np.ndarray]:
    """The first ``n`` records of the first file, in the columns Ray Data gives the decoder."""
    first = files[0]
    if fmt == "jsonl":
        lines = storage.read_text(first).splitlines()[:n]
        return {"text": np.array(lines, dtype=object), "path": np.array([first] * len(lines), dtype=object)}
    if fmt == "parquet":
        import pyarrow.parquet as pq

        fs, path = storage.resolve(first)
        table = pq.ParquetFile(fs.open_input_file(path)).read_row_group(0).slice(0, n)
        batch = {k: np.array(v, dtype=object) for k, v in table.to_pydict().items()}
        batch["path"] = np.array([first] * table.num_rows, dtype=object)
        return batch
    import io
    import tarfile

    members: dict[str, dict[str, bytes]] = {}
    with tarfile.open(fileobj=io.BytesIO(storage.read_bytes(first))) as tar:
        for m in tar:
            if not m.isfile():
                continue
            key, _, ext = m.name.partition(".")
            if key not in members and len(members) == n:
                break
            members.setdefault(key, {})[ext] = tar.extractfile(m).read()
    exts = sorted({e for v in members.values() for e in v})
    batch = {e: np.array([v.get(e) for v in members.values()], dtype=object) for e in exts}
    batch["__key__"] = np.array(list(members), dtype=object)
    return batch


def plan(cfg: PretrainConfig) -> dict[str, Any]:
    """Everything checked on the driver: objective, precision, files, the model's image size and
    a first sample of pairs (a corpus whose first pairs are all unusable fails here, naming why)."""
    objective = get_objective(cfg.model.objective_name)
    source = cfg.data.pairs
    try:
        resolve_precision(cfg.deepspeed.precision, cfg.scaling.use_gpu)
    except ValueError as err:
        raise PairsError(str(err)) from None
    try:
        files, fmt = expand_pair_files(source.paths, source.format)
    except ValueError as err:
        raise PairsError(str(err)) from None
    tokenizer = source.tokenizer
    if cfg.model.from_pretrained:
        from fs_ray.pretrained import PretrainedError, resolve

        try:
            tokenizer = resolve(cfg.model.from_pretrained)  # the model's own (an export's tokenizer.json)
        except PretrainedError as err:
            raise PairsError(f"model.from_pretrained: {err}") from None
        if not storage.is_uri(cfg.model.from_pretrained) and os.path.isdir(tokenizer):
            cfg.model.from_pretrained = absolute(tokenizer)  # workers may start in another folder
    try:
        from fs_ray.data.tokenization import load_tokenizer

        tok = load_tokenizer(tokenizer)
    except (OSError, ValueError) as err:
        raise PairsError(f"data.pairs.tokenizer: {err}") from None
    if tok.token_to_id("[CLS]") is None or tok.token_to_id("[SEP]") is None:
        raise PairsError(f"data.pairs.tokenizer: {tokenizer} has no [CLS]/[SEP]: the text tower is BERT-style")
    vocab, pad = tok.get_vocab_size(), tok.token_to_id("[PAD]") or 0
    try:
        config = _model_config(cfg, vocab, pad)
    except Exception as err:
        raise PairsError(f"model: {err}") from None
    vision = getattr(config, "vision_config", None)
    if vision is None:
        raise PairsError(f"model: objective {objective.name} needs an image tower; {cfg.model.family} has none")
    spec = pair_spec(source, fmt, int(vision.image_size), tokenizer)
    try:
        out, counts, bad = decode_pairs(sample_batch(files, fmt), spec)
    except Exception as err:
        raise PairsError(f"data.pairs: cannot read {files[0]} as {fmt}: {type(err).__name__}: {err}") from None
    if counts["records"] and not counts["pairs"]:
        reasons = ", ".join(f"{r} {counts[r]}" for r in IMAGE_BAD_REASONS if counts[r])
        examples = "; ".join(f"{b['file']}: {b['where']}" for b in bad[:3])
        raise PairsError(f"data.pairs: none of the first {counts['records']} pairs is usable ({reasons}): {examples}")
    zero_shot = None
    if cfg.data.zero_shot is not None and cfg.data.zero_shot.paths:
        try:
            zero_shot = expand_pair_files(cfg.data.zero_shot.paths, source.format, "data.zero_shot.paths")
        except ValueError as err:
            raise PairsError(str(err)) from None
    return {
        "objective": objective,
        "files": files,
        "spec": spec,
        "zero_shot_files": zero_shot,
        "run_dir": cfg.run.run_dir(),
        "storage_path": absolute(cfg.run.storage_path),
        "width": model_width(config.text_config),
        "tokenizer": tokenizer,
        "vocab": (vocab, pad),
        "sample": {k: int(v) for k, v in counts.items()},
        "text_len": int(out["attention_mask"].sum(1).max()) if len(out["attention_mask"]) else 0,
    }


# ---------------------------------------------------------------------------------------------
# worker side
# ---------------------------------------------------------------------------------------------
class PairsWork(PretrainWork):
    """The loop's work for contrastive pretraining: the dual encoder under the objective's loss,
    batches of pairs from this rank's equal share of the stream, epoch after epoch. Set-up,
    checkpoint schedule, report and checkpoint files are pretraining's (:class:`PretrainWork`)."""

    label = "pretrain"
    id_key = "input_ids"
    final_checkpoint = False
    loss_parts: tuple[str, ...] = ()

    def __init__(
        self, cfg: PretrainConfig, run_dir: str, tokenizer_json: str, tokenizer_originals: dict[str, bytes], vocab: tuple[int, int]
    ):
        self.cfg = cfg
        self.vocab, self.pad = vocab
        self.optim, self.deepspeed, self.scaling = cfg.optim, cfg.deepspeed, cfg.scaling
        self.seed = cfg.run.seed
        self.objective = get_objective(cfg.model.objective_name)
        self.probe_keys = self.objective.probe_keys
        self.total_steps = cfg.optim.max_steps
        self.log_every = max(1, min(10, cfg.checkpoint.every_n_steps))
        self.run_dir, self.tokenizer_json, self.tokenizer_originals = run_dir, tokenizer_json, tokenizer_originals
        self.trace_dir = None
        self.tensorboard_dir = self.metrics_path = None
        self.epoch, self.in_epoch = 0, 0  # batches this rank has trained in the current epoch

    def build(self):
        from fs_ray.families import build_model

        model = build_model(
            self.cfg.model, self.objective.auto_class, self.vocab, self.cfg.data.pairs.max_text_len, {"pad": self.pad}
        )
        return self.objective.wrap(model), model

    def resume(self, state: dict, resumed: bool) -> None:
        self.epoch, self.in_epoch = int(state.get("epoch", 0)), int(state.get("in_epoch", 0))

    def batches(self, start: int):
        """This rank's micro-batches, epoch after epoch, from where the checkpoint left off."""
        import ray.train

        shard = ray.train.get_dataset_shard("train")
        buffer = self.cfg.data.pairs.shuffle_buffer
        skip = self.in_epoch
        while True:
            n = 0
            for batch in shard.iter_torch_batches(
                batch_size=self.optim.micro_batch_size,
                drop_last=True,  # every rank the same batch size: the global batch is all-gathered
                local_shuffle_buffer_size=buffer or None,
                local_shuffle_seed=(self.seed * 100_003 + self.epoch) & 0x7FFFFFFF if buffer else None,
                prefetch_batches=2,
            ):
                n += 1
                if n <= skip:
                    continue
                self.in_epoch = n
                yield batch
            if n == 0:
                raise RuntimeError(
                    f"no batch of {self.optim.micro_batch_size} usable pairs reached this worker: fewer pairs "
                    "than workers x optim.micro_batch_size (see the bad-pair counts above)"
                )
            self.epoch, self.in_epoch, skip = self.epoch + 1, 0, 0

    def inputs(self, batch, gen):
        return self.objective.inputs(batch, {}, 0, gen)

    def evaluate(self, engine, step: int, train_loss: float) -> dict:
        return {"epoch": self.epoch}

    def state(self) -> dict:
        return {"epoch": self.epoch, "in_epoch": self.in_epoch}

    def checkpoint_meta(self) -> dict:
        return {
            "auto_class": self.objective.auto_class,
            "objective": self.objective.name,
            "objective_options": {},
            "family": self.cfg.model.family,
            "special_ids": special_ids(self.tokenizer_json),
            "image_text": image_text_card(self.cfg),  # export writes it beside the weights
        }


def image_text_card(cfg: PretrainConfig) -> dict[str, Any]:
    """The export card's run-side fields (:func:`write_card`; the image size comes from the model)."""
    zs = cfg.data.zero_shot
    classes, templates = (list(zs.classes), list(zs.templates)) if zs else ([], [])
    return {"max_text_len": cfg.data.pairs.max_text_len, "classes": classes, "templates": templates,
            "trained_on": cfg.run.name}  # fmt: skip



def special_ids(tokenizer_json: str) -> dict[str, int]:
    from fs_ray.data.tokenization import tokenizer_from_json

    tok = tokenizer_from_json(tokenizer_json)
    names = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
    return {k: tok.token_to_id(v) for k, v in names.items() if tok.token_to_id(v) is not None}


class PairCounts:
    """Controller-side: the bad-pair counts so far, printed with each registered checkpoint."""

    def __init__(self, stats):
        self.stats = stats

    def after_report(self, run_context, metrics, checkpoint) -> None:
        if checkpoint is None:
            return
        import ray

        counts = ray.get(self.stats.snapshot.remote())["counts"]
        print(f"[pretrain] pairs read so far: {counts_line(counts)}", flush=True)

    def after_exception(self, run_context, worker_exceptions) -> None:
        return None


def counts_line(counts: dict[str, int]) -> str:
    bad = ", ".join(f"{r} {counts[r]:,}" for r in IMAGE_BAD_REASONS if counts.get(r))
    return f"{counts.get('pairs', 0):,} usable of {counts.get('records', 0):,}" + (f" (skipped: {bad})" if bad else "")


def _callback(stats):
    from ray.train import UserCallback

    cls = type("PairCountsUserCallback", (PairCounts, UserCallback), {})
    return cls(stats)


# ---------------------------------------------------------------------------------------------
# driver side
# ---------------------------------------------------------------------------------------------
def tokenizer_files(source: str) -> tuple[str, dict[str, bytes]]:
    """(tokenizer.json text, original files to keep beside the export) of a caption tokenizer."""
    from fs_ray.data.tokenization import load_tokenizer, tokenizer_json
    from fs_ray.pretrained import original_tokenizer_files

    return tokenizer_json(load_tokenizer(source)), original_tokenizer_files(source)


def pretrain_pairs(cfg: PretrainConfig, log=print) -> dict[str, Any]:
    """Run (or resume) contrastive pretraining on the current Ray cluster; export; score zero-shot."""
    import ray

    p = plan(cfg)
    out = p["run_dir"]
    write_resolved(cfg, out)
    storage.write_text(
        storage.join(out, "deepspeed_config.json"),
        json.dumps(
            deepspeed_config(cfg.optim, cfg.deepspeed, cfg.scaling.num_workers, cfg.scaling.use_gpu, p["width"]),
            indent=2,
        ),
    )
    tokenizer_json, originals = tokenizer_files(p["tokenizer"])
    if not ray.is_initialized():
        ray.init()
    try:
        storage.check_shared(p["storage_path"])
    except storage.StorageError as err:
        raise PairsError(str(err)) from None
    source = cfg.data.pairs
    stats = pair_stats(source.max_bad_fraction)
    need = cfg.scaling.num_workers * cfg.scaling.cpus_per_worker + source.decode_cpus
    have = ray.cluster_resources().get("CPU", 0)
    if have < need:
        log(
            f"[pretrain] warning: the cluster has {have:g} CPUs, the run needs {need:g} (scaling.num_workers x "
            f"scaling.cpus_per_worker + data.pairs.decode_cpus): decoding waits for a node to join; on a fixed "
            "cluster lower scaling.cpus_per_worker or data.pairs.decode_cpus"
        )
    dataset = pair_dataset(
        p["files"], p["spec"], stats, source.max_bad_fraction, shuffle_seed=cfg.run.seed, decode_cpus=source.decode_cpus
    )
    start = f"from {cfg.model.from_pretrained}, " if cfg.model.from_pretrained else f"{cfg.model.preset} "
    log(
        f"[pretrain] {cfg.model.family}/{start}({p['objective'].name}), {cfg.scaling.num_workers} workers, "
        f"{cfg.optim.max_steps} steps x {cfg.optim.micro_batch_size} pairs x {cfg.optim.grad_accum} accum "
        f"(global batch {cfg.optim.micro_batch_size * cfg.scaling.num_workers}), ZeRO-{cfg.deepspeed.zero_stage}, "
        f"{len(p['files'])} {p['spec'].fmt} file(s), images {p['spec'].image_size}px -> {out}"
    )
    from ray.train import DataConfig

    result = fit(
        PairsWork(cfg, out, tokenizer_json, originals, p["vocab"]),
        name=cfg.run.name,
        storage_path=p["storage_path"],
        datasets={"train": dataset},
        dataset_config=DataConfig(),
        checkpoint=cfg.checkpoint,
        callbacks=[_callback(stats)],
        log=log,
    )
    counts = ray.get(stats.snapshot.remote())["counts"]
    summary: dict[str, Any] = {
        "run_dir": out,
        "metrics": result.metrics,
        "checkpoint": None,
        "export": None,
        "pairs": counts,
        "zero_shot": None,
    }
    log(f"[pretrain] pairs read: {counts_line(counts)}")
    if result.checkpoint is not None:
        from fs_ray.training.export import export_checkpoint

        summary["checkpoint"] = result.checkpoint.path
        with result.checkpoint.as_directory() as ckpt:
            export_dir = os.path.join(out, "export") if not storage.is_uri(out) else os.path.abspath("export")
            summary["export"] = export_checkpoint(ckpt, export_dir)
    log(
        f"[pretrain] done: step {result.metrics.get('step')}  loss {result.metrics.get('loss', float('nan')):.4f}  "
        f"checkpoint {summary['checkpoint']}  export {summary['export']}"
    )
    if summary["export"] and p["zero_shot_files"]:
        files, fmt = p["zero_shot_files"]
        task = ray.remote(num_cpus=1, num_gpus=1 if cfg.scaling.use_gpu else 0)(evaluate_export)
        scores = ray.get(task.remote(summary["export"], files, fmt, cfg.data.zero_shot, source))
        storage.write_text(storage.join(out, "zero_shot.json"), json.dumps(scores, indent=2, ensure_ascii=False))
        summary["zero_shot"] = scores
        log(f"[pretrain] {zero_shot_line(scores)} -> {storage.join(out, 'zero_shot.json')}")
    return summary


def write_preprocessor(export_dir: str, image_size: int) -> None:
    """The export's image preprocessing as CLIP's (``preprocessor_config.json``), what serving and
    ``CLIPImageProcessor.from_pretrained`` read: shorter side to ``image_size``, centre crop, CLIP mean/std."""
    from fs_ray.data.images import CLIP_MEAN, CLIP_STD

    config = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": image_size},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": image_size, "width": image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "do_convert_rgb": True,
    }
    with open(os.path.join(export_dir, "preprocessor_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)


def write_card(
    export_dir: str, max_text_len: int, image_size: int, classes: list[str], templates: list[str], trained_on: str
) -> None:
    """What serving needs to embed as training did (``fs_ray_image_text.json``): the caption
    length, the image size, and the run's zero-shot classes and templates as the default label set."""
    from fs_ray.serving.inference import IMAGE_TEXT_CARD

    card = {
        "max_text_len": max_text_len,
        "image_size": image_size,
        "classes": list(classes),
        "templates": list(templates) if classes else ["{}"],
        "trained_on": trained_on,
    }
    with open(os.path.join(export_dir, IMAGE_TEXT_CARD), "w", encoding="utf-8") as f:
        json.dump(card, f, indent=2, ensure_ascii=False)


def export_released_pair(text_folder: str, clip_folder: str, out: str, max_text_len: int | None = None) -> str:
    """A released Taiyi text tower and an openai CLIP folder written as one pair folder in the
    layout fs_ray's export has (``text/``, ``vision/``, the pair's config, the text tower's
    tokenizer, CLIP's preprocessing, the card): what ``models.image_text``, ``AutoModel`` and
    ``model.from_pretrained`` take. ``max_text_len``: caption tokens (default: the text tower's
    position count, at most 512)."""
    from fs_ray.models.taiyi import from_released
    from fs_ray.training.export import save_tokenizer

    pair = from_released(text_folder, clip_folder)
    pair.save_pretrained(out)
    tokenizer_json, originals = tokenizer_files(text_folder)  # as a training run's export keeps them
    paths = {name: os.path.join(text_folder, name) for name in originals}
    save_tokenizer(out, tokenizer_json, special_ids(tokenizer_json), paths)
    image_size = int(pair.config.vision_config.image_size)
    write_preprocessor(out, image_size)
    length = max_text_len or min(512, int(pair.config.text_config.max_position_embeddings))
    write_card(out, length, image_size, [], [], f"released: {text_folder} + {clip_folder}")
    return out


# ---------------------------------------------------------------------------------------------
# zero-shot classification and retrieval
# ---------------------------------------------------------------------------------------------
def load_pairs(files: list[str], spec: PairSpec) -> dict[str, Any]:
    """Every usable labelled pair of ``files`` (read and decoded by Ray Data), with each pair's
    image identified by its pixels and its caption text."""
    import hashlib

    from fs_ray.data.images import pair_dataset

    pixels, labels, captions, keys = [], [], [], []
    keep_text = PairSpec(**{**spec.__dict__, "keep_text": True})
    for batch in pair_dataset(files, keep_text).iter_batches(batch_size=None, batch_format="numpy"):
        pixels.append(batch["pixels"])
        labels.append(batch["label"])
        captions.extend(batch["caption"].tolist())
        keys.extend(hashlib.blake2b(p.tobytes(), digest_size=8).hexdigest() for p in batch["pixels"])
    return {
        "pixels": np.concatenate(pixels) if pixels else np.zeros((0,)),
        "labels": np.concatenate(labels) if labels else np.zeros((0,), np.int64),
        "captions": captions,
        "keys": keys,
    }


def recall_at(similarity: np.ndarray, relevant: np.ndarray, ks=(1, 5, 10)) -> dict[str, float]:
    """Share of queries (rows) with a relevant item (``relevant[i, j]``) among their top k."""
    order = np.argsort(-similarity, axis=1, kind="stable")
    hits = np.take_along_axis(relevant, order, axis=1)
    return {f"R@{k}": float(hits[:, :k].any(axis=1).mean()) for k in ks}


def score(pair, pairs: dict[str, Any], zs: ZeroShotSection) -> dict[str, Any]:
    """Zero-shot accuracy of the unique images and retrieval Recall@1/5/10 both ways, by
    ``pair`` (a :class:`~fs_ray.serving.inference.ImageText`: the code serving runs)."""
    first = {}
    for i, key in enumerate(pairs["keys"]):
        first.setdefault(key, i)
    image_rows = list(first.values())
    labels = pairs["labels"][image_rows]
    image_emb = pair.image_features(pairs["pixels"][image_rows], zs.batch_size)
    # zero-shot: each class's prompts embedded, averaged and renormalised
    class_emb = pair.class_features(list(zs.classes), list(zs.templates))
    predicted = (image_emb @ class_emb.t()).argmax(1).numpy()
    correct = predicted == labels
    per_class = {
        zs.classes[c]: float(correct[labels == c].mean()) for c in range(len(zs.classes)) if (labels == c).any()
    }
    counts = np.bincount(labels[labels >= 0], minlength=len(zs.classes))
    # retrieval: unique images against unique captions; relevant = paired in the set
    texts = sorted(set(pairs["captions"]))
    text_index = {t: j for j, t in enumerate(texts)}
    image_index = {k: i for i, k in enumerate(first)}
    relevant = np.zeros((len(image_rows), len(texts)), dtype=bool)
    for key, caption in zip(pairs["keys"], pairs["captions"], strict=True):
        relevant[image_index[key], text_index[caption]] = True
    similarity = (image_emb @ pair.text_features(texts, zs.batch_size).t()).numpy()
    return {
        "images": len(image_rows),
        "classes": len(zs.classes),
        "templates": list(zs.templates),
        "zero_shot_accuracy": float(correct.mean()),
        "chance": 1 / len(zs.classes),
        "majority": float(counts.max() / max(1, counts.sum())),
        "per_class_accuracy": per_class,
        "texts": len(texts),
        "image_to_text": recall_at(similarity, relevant),
        "text_to_image": recall_at(similarity.T, relevant.T),
        "predictions": [
            {"image": k, "label": int(y), "predicted": int(p)}
            for k, y, p in zip(list(first), labels.tolist(), predicted.tolist(), strict=True)
        ],
    }


def evaluate_export(export_dir: str, files: list[str], fmt: str, zs: ZeroShotSection, source: PairSource) -> dict:
    """Load the exported pair and score it on the zero-shot set (run as a Ray task)."""
    from fs_ray.serving.inference import ImageText

    t0 = time.monotonic()
    pair = ImageText(export_dir, max_len=source.max_text_len)
    spec = pair_spec(source, fmt, pair.image_size, export_dir, zs.label_field)
    scores = score(pair, load_pairs(files, spec), zs)
    scores["seconds"] = round(time.monotonic() - t0, 1)
    scores["model"] = export_dir
    return scores


def zero_shot_line(scores: dict[str, Any]) -> str:
    i2t, t2i = scores["image_to_text"], scores["text_to_image"]
    return (
        f"zero-shot accuracy {scores['zero_shot_accuracy']:.1%} on {scores['images']} images "
        f"({scores['classes']} classes, chance {scores['chance']:.0%}, majority {scores['majority']:.1%}); "
        f"image->text R@1/5/10 {i2t['R@1']:.1%}/{i2t['R@5']:.1%}/{i2t['R@10']:.1%}, "
        f"text->image {t2i['R@1']:.1%}/{t2i['R@5']:.1%}/{t2i['R@10']:.1%} ({scores['texts']} texts)"
    )
