"""One typed config per kind of run: prepare, pretrain, finetune, tune, serve.

Each YAML under ``jobs/configs/``, ``tune/configs/`` and ``serve/configs/`` starts with
``kind: <name>`` and validates against the model registered for that kind in :data:`CONFIG_KINDS`.
Field descriptions are the ``--help`` text of the front ends, so write them for users.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from fs_ray.config import ConfigError, Section, load_config
from fs_ray.families import DEFAULT_FAMILY

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


# ----------------------------------------------------------------------------------------------
# Sections shared by several kinds of run
# ----------------------------------------------------------------------------------------------
class RunSection(Section):
    name: str = Field(
        "fs_ray", description="Run name; outputs go to <storage_path>/<name>. The same name resumes."
    )
    storage_path: str = Field(
        default_factory=lambda: os.environ.get("FS_RAY_STORAGE", "runs"),
        description="Root folder of run outputs: a local path (relative to the job's working dir), an "
        "object-store URI (s3://bucket/prefix, gs://bucket/prefix; S3-compatible stores with "
        "?endpoint_override=host:port&scheme=http), or a shared mount. Default: $FS_RAY_STORAGE, else "
        "runs. Multi-node runs refuse a folder other nodes cannot see.",
    )
    seed: int = Field(42, description="Seed for shuffling, masking and initialisation.")

    @field_validator("name")
    @classmethod
    def _name_is_a_folder_name(cls, v: str) -> str:
        if not v or "/" in v or v in {".", ".."}:
            raise ValueError("must be a plain folder name (no '/')")
        return v

    def output_dir(self) -> str:
        from fs_ray.storage import join

        return join(self.storage_path, self.name)

    def run_dir(self) -> str:
        """:meth:`output_dir` resolved: ``asset://`` expanded and a local path made absolute
        (workers and Tune trials run in working folders of their own)."""
        from fs_ray.assets import absolute

        return absolute(self.output_dir())


class ScalingSection(Section):
    num_workers: PositiveInt = Field(
        1, description="Ray Train workers (one process per GPU on a GPU cluster)."
    )
    use_gpu: bool = Field(
        False, description="Give each worker one GPU (NCCL); False trains on CPU with gloo."
    )
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved for each worker.")
    resources_per_worker: dict[str, float] = Field(
        default_factory=dict,
        description="Extra custom resources per worker, e.g. {accelerator_type:A100: 0.001}.",
    )
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="How workers are placed on nodes; SPREAD puts one worker per node where it can."
    )
    wait_warning_s: float = Field(
        30.0,
        gt=0,
        description="Say so (what the run asks for, what is free, who holds the rest) when the workers "
        "have waited this long for resources, and every 5 minutes after.",
    )


class TokenizerSection(Section):
    source: str = Field(
        "bert-chinese",
        description="Builtin vocab name (bert-chinese, bert-chinese-sentinels), a WordPiece vocab.txt, a "
        "tokenizer.json, or a Hugging Face model folder holding either.",
    )
    lowercase: bool = Field(
        True, description="Lowercase Latin text (WordPiece vocab.txt only; as bert-base-chinese)."
    )


# ----------------------------------------------------------------------------------------------
# prepare: raw corpora -> tokenized parquet shards
# ----------------------------------------------------------------------------------------------
class PrepareInput(Section):
    paths: list[str] = Field(
        default_factory=lambda: ["asset://corpus/clue_corpus_small_sample.txt"],
        description="Files, directories or globs (local paths or URIs such as s3://...); .gz is read "
        "transparently. asset://... names a file shipped with fs_ray.",
    )
    format: Literal["auto", "text", "jsonl"] = Field(
        "auto",
        description="text: one document per line; jsonl: one JSON object per line; auto: by extension "
        "(.txt/.text text, .jsonl/.json/.ndjson jsonl, each optionally .gz; any other is refused).",
    )
    text_field: str | list[str] = Field(
        "text",
        description="jsonl: key of the document text, dotted for nested keys (a.b); a list means the first "
        "key present in each record (mixing corpora such as [text, sentence, content]).",
    )

    @field_validator("paths")
    @classmethod
    def _not_empty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one input path is required")
        return v

    @model_validator(mode="after")
    def _text_field_needs_json(self) -> PrepareInput:
        if self.format == "text" and "text_field" in self.model_fields_set:
            raise ValueError(
                "text_field: format text reads each line as a document and ignores it; "
                "use format: jsonl (or auto, by extension) for JSON records"
            )
        return self


class CleanSection(Section):
    normalize: Literal["NFC", "NFKC", "none"] = Field(
        "NFC", description="Unicode normalisation; NFKC also folds full-width letters/digits/punctuation."
    )
    strip_control: bool = Field(
        True, description="Remove control and zero-width characters, collapse whitespace runs."
    )
    min_chars: NonNegInt = Field(
        10, description="Drop documents shorter than this after cleaning (reason: too_short)."
    )
    dedup: bool = Field(
        False, description="Drop exact duplicate documents (after cleaning) across the whole corpus."
    )


class PackSection(Section):
    mode: Literal["fixed", "document"] = Field(
        "fixed",
        description="fixed: concatenate documents and cut sequences of exactly seq_len (no padding); "
        "document: one document per sequence, long ones split.",
    )
    seq_len: int = Field(
        512, ge=8, le=65536, description="Tokens per training sequence, special tokens included."
    )
    word_boundaries: bool = Field(
        True, description="Store jieba word-start flags beside token ids (whole-word masking)."
    )


class PrepareOutput(Section):
    dir: str = Field(
        "data/prepared/demo", description="Output folder (local or URI) for parquet shards + manifest.json."
    )
    shard_max_mb: float = Field(
        128.0, gt=0, description="Upper bound on one shard's size (uncompressed token bytes)."
    )
    overwrite: bool = Field(False, description="Replace an existing prepared folder instead of refusing.")


class PrepareConfig(Section):
    """Turn raw Chinese text into tokenized, packed, sharded parquet that pretraining streams."""

    kind: Literal["prepare"] = "prepare"
    input: PrepareInput = Field(default_factory=PrepareInput, description="What to read.")
    clean: CleanSection = Field(
        default_factory=CleanSection, description="How documents are cleaned and filtered."
    )
    tokenizer: TokenizerSection = Field(default_factory=TokenizerSection, description="Vocabulary.")
    pack: PackSection = Field(
        default_factory=PackSection, description="How tokens become training sequences."
    )
    output: PrepareOutput = Field(default_factory=PrepareOutput, description="Where shards go.")
    max_bad_fraction: Fraction = Field(
        0.05,
        description="Stop the job when more than this fraction of records is malformed (bad JSON, bad UTF-8, ...).",
    )
    batch_docs: PositiveInt = Field(
        2048, description="Documents per Ray Data batch; packing is done within a batch."
    )
    concurrency: PositiveInt | None = Field(
        None, description="Max parallel tasks per stage; default: all CPUs."
    )
    progress_every_s: float = Field(5.0, gt=0, description="Seconds between progress lines.")


# ----------------------------------------------------------------------------------------------
# pretrain / finetune: Ray Train + DeepSpeed
# ----------------------------------------------------------------------------------------------
def _families_help() -> str:
    from fs_ray.families import FAMILIES

    return "; ".join(f"{f.name}: {f.summary} (presets {', '.join(f.presets)})" for f in FAMILIES.values())


class ModelSection(Section):
    family: str = Field(DEFAULT_FAMILY, description="Model family. " + _families_help() + ".")
    preset: str = Field(
        "tiny", description="Named size preset of the family (see family); ignored with from_pretrained."
    )
    objective: str | None = Field(
        None,
        description="Pretraining objective; default: the family's own (erlangshen mlm, wenzhong clm, ...).",
    )
    objective_options: dict[str, float] = Field(
        default_factory=dict,
        description="Rates of the objective, e.g. {mask_ratio: 0.3, poisson_lambda: 3.0, permute_ratio: 1.0} "
        "for bart, {gap_ratio: 0.3} for gsg, {noise_density: 0.15, mean_span: 3.0} for span.",
    )
    from_pretrained: str | None = Field(
        None,
        description="Released or exported model to start from: a local Hugging Face folder, an object-store "
        "URI (copied to each node once) or a hub id such as IDEA-CCNL/Erlangshen-Roberta-110M (where the hub "
        "is reachable). Its family, architecture, special ids and tokenizer come from its own files.",
    )
    reinit_head: bool = Field(
        False,
        description="Fine-tuning a released classifier on a task whose labels its head does not have: "
        "start a new head on its encoder (default: refuse, naming both label sets).",
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Hugging Face config fields to override."
    )

    @field_validator("family")
    @classmethod
    def _implemented(cls, v: str) -> str:
        from fs_ray.families import get_family

        get_family(v)
        return v

    @model_validator(mode="after")
    def _fits_the_family(self) -> ModelSection:
        from fs_ray.families import get_family

        family = get_family(self.family)
        if not self.from_pretrained:
            family.check_preset(self.preset)
        if self.objective is not None and self.objective not in family.objectives:
            raise ValueError(
                f"objective: {self.objective!r} is not a {self.family} objective ({', '.join(family.objectives)})"
            )
        from fs_ray.objectives import get_objective

        problem = get_objective(self.objective_name).check_options(self.objective_options)
        if problem:
            raise ValueError(f"objective_options: {problem}")
        return self

    @property
    def objective_name(self) -> str:
        from fs_ray.families import get_family

        return self.objective or get_family(self.family).default_objective


class OptimSection(Section):
    lr: float = Field(1e-4, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup_steps: NonNegInt = Field(0, description="Linear warmup steps.")
    schedule: Literal["linear", "cosine", "constant"] = Field("linear", description="Decay after warmup.")
    max_steps: PositiveInt = Field(100, description="Optimizer steps in total.")
    micro_batch_size: PositiveInt = Field(8, description="Sequences per worker per micro-step.")
    grad_accum: PositiveInt = Field(1, description="Micro-steps per optimizer step.")
    grad_clip: float = Field(1.0, ge=0, description="Gradient norm clip; 0 disables.")


class DeepSpeedSection(Section):
    zero_stage: Literal[0, 1, 2, 3] = Field(0, description="ZeRO stage.")
    offload_optimizer: bool = Field(False, description="Keep optimizer state in CPU memory (ZeRO-Offload).")
    offload_params: bool = Field(False, description="Keep parameters in CPU memory (ZeRO-3 only).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 on GPU, fp32 on CPU (bf16 on CPU is ~50x slower)."
    )
    activation_checkpointing: bool = Field(
        False, description="Recompute activations in backward to save memory."
    )

    @model_validator(mode="after")
    def _offload_params_needs_zero3(self) -> DeepSpeedSection:
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage: 3")
        return self


class CheckpointSection(Section):
    every_n_steps: PositiveInt = Field(
        50, description="Save a checkpoint every N optimizer steps (and at the end)."
    )
    keep_last: PositiveInt = Field(2, description="Checkpoints kept; older ones are deleted.")
    max_failures: int = Field(
        3, ge=-1, description="Worker-group restarts from the last checkpoint; -1 = forever."
    )


class PairSource(Section):
    paths: list[str] = Field(
        default_factory=list,
        description="Image-text pairs: JSON lines ({image: path relative to the file or a URI, text}), parquet "
        "(image bytes or {bytes, path} structs + a caption column) or WebDataset .tar shards (<key>.jpg/.png + "
        "<key>.txt); files, folders or globs, local or object-store URIs. Generate a real set with "
        "python -m fs_ray.data.digits.",
    )
    format: Literal["auto", "jsonl", "parquet", "webdataset"] = Field(
        "auto", description="auto: by extension (.jsonl/.json, .parquet, .tar)."
    )
    image_field: str = Field("image", description="Image field, column or WebDataset extension.")
    text_field: str = Field("text", description="Caption field, column or WebDataset extension.")
    tokenizer: str = Field(
        "bert-chinese",
        description="Caption tokenizer (builtin name, vocab.txt, tokenizer.json or folder); with "
        "model.from_pretrained the model's own.",
    )
    max_text_len: PositiveInt = Field(32, description="Caption tokens, [CLS] and [SEP] included.")
    max_image_mb: float = Field(20.0, gt=0, description="Larger encoded images are counted as image_too_large.")
    max_bad_fraction: Fraction = Field(
        0.05,
        description="Unusable pairs (malformed line, missing field, unreadable / non-image / truncated / too "
        "large image, empty caption) are counted by reason and skipped; past this fraction the run stops "
        "and names them.",
    )
    shuffle_buffer: NonNegInt = Field(
        4096, description="Pairs each worker shuffles in a local buffer (plus file order per epoch); 0: none."
    )
    decode_cpus: float = Field(
        1.0,
        ge=0,
        description="CPUs each Ray Data decode task reserves (images are real work: on a cluster they run on "
        "the CPUs the training workers leave free, any node). The cluster needs num_workers x "
        "cpus_per_worker + decode_cpus CPUs; 0 reserves none (decoding then competes with training).",
    )


class ZeroShotSection(Section):
    paths: list[str] = Field(
        default_factory=list,
        description="Labelled held-out pairs (same formats as data.pairs, with label_field): their images are "
        "classified zero-shot from classes x templates, and image<->text retrieval is scored on the pairs.",
    )
    label_field: str = Field("label", description="Integer class index field (into classes).")
    classes: list[str] = Field(default_factory=list, description="Class names rendered into the templates.")
    templates: list[str] = Field(
        default_factory=lambda: ["{}"],
        description="Prompt templates, {} = class name; each class's text embedding is the mean over them.",
    )
    batch_size: PositiveInt = Field(256, description="Images or texts per forward pass.")

    @model_validator(mode="after")
    def _complete(self) -> ZeroShotSection:
        if self.paths and not self.classes:
            raise ValueError("classes: the class names are needed to classify zero-shot")
        bad = [t for t in self.templates if "{}" not in t]
        if bad:
            raise ValueError(f"templates: each needs a {{}} for the class name: {bad}")
        return self


class PretrainData(Section):
    prepared_dir: str = Field(
        "data/prepared/demo", description="Folder written by jobs/prepare.py (has manifest.json)."
    )
    pairs: PairSource | None = Field(
        None, description="Image-text pairs for the contrastive objective (Taiyi) instead of a prepared corpus."
    )
    zero_shot: ZeroShotSection | None = Field(
        None, description="Held-out labelled pairs scored after training (zero-shot accuracy, retrieval R@1/5/10)."
    )


class PretrainConfig(Section):
    """Continue or start pretraining a Fengshenbang model on prepared shards."""

    kind: Literal["pretrain"] = "pretrain"
    run: RunSection = Field(default_factory=RunSection, description="Name, storage and seed.")
    model: ModelSection = Field(
        default_factory=ModelSection, description="Architecture and starting weights."
    )
    data: PretrainData = Field(default_factory=PretrainData, description="Prepared corpus.")
    optim: OptimSection = Field(default_factory=OptimSection, description="Optimizer and schedule.")
    deepspeed: DeepSpeedSection = Field(
        default_factory=DeepSpeedSection, description="DeepSpeed engine options."
    )
    scaling: ScalingSection = Field(default_factory=ScalingSection, description="Ray Train workers.")
    checkpoint: CheckpointSection = Field(
        default_factory=CheckpointSection, description="Checkpointing and restarts."
    )

    @model_validator(mode="after")
    def _data_fits_the_objective(self) -> PretrainConfig:
        from fs_ray.objectives import get_objective

        wants_pairs = get_objective(self.model.objective_name).pairs
        if wants_pairs and (self.data.pairs is None or not self.data.pairs.paths):
            raise ValueError(
                f"data.pairs.paths: objective {self.model.objective_name} trains on image-text pairs; name them"
            )
        if not wants_pairs and self.data.pairs is not None:
            raise ValueError(
                f"data.pairs: objective {self.model.objective_name} trains on a prepared corpus (data.prepared_dir)"
            )
        return self


def _methods_help() -> str:
    from fs_ray.objectives import METHODS

    return "; ".join(f"{m.name}: {m.summary}" for m in METHODS.values())


class FinetuneTasks(Section):
    names: list[str] = Field(
        default_factory=lambda: ["eprstmt"],
        description="Tasks to run: FewCLUE (eprstmt, tnews, iflytek, csldcp, ocnli, bustm, csl, chid, cluewsc), "
        "chnsenticorp, smp2020_ewect, msra_ner, or names defined under task_specs.",
    )
    data_root: str = Field(
        "asset://",
        description="Folder holding the task folders (fewclue/<task>, chnsenticorp, ...); asset:// is the copy "
        "shipped with fs_ray (FewCLUE eprstmt only). Point it at a full data directory for the rest.",
    )
    splits: list[str] | None = Field(
        None, description="Splits to run (FewCLUE: 0 1 2 3 4 few_all); default: each task's own list."
    )
    max_len: int = Field(128, ge=16, le=4096, description="Tokens per input, special tokens included.")

    @field_validator("splits", mode="before")
    @classmethod
    def _split_names_are_text(cls, v: Any) -> Any:
        return [str(x) for x in v] if isinstance(v, list) else v

    truncation: Literal["head", "tail", "head_tail"] = Field(
        "head_tail",
        description="How long texts are cut: keep the head, the tail, or a quarter head + three quarters tail.",
    )
    max_bad_fraction: Fraction = Field(
        0.0,
        description="Fraction of malformed records (missing field, unknown label, bad span) a file may have; "
        "they are skipped and counted. Above it the run stops naming file, line and field.",
    )
    unimc_max_options: PositiveInt = Field(
        32, description="UniMC: most options rendered into one input (more are split over several)."
    )


class FinetuneOptim(OptimSection):
    lr: float = Field(5e-5, gt=0, description="Peak learning rate.")
    epochs: float = Field(
        10.0,
        ge=0,
        description="Passes over the training file; sets max_steps (0: evaluate only, e.g. zero-shot).",
    )
    max_steps: PositiveInt = Field(100, description="Ignored: fine-tuning runs for `epochs`.")
    micro_batch_size: PositiveInt = Field(16, description="Rows per worker per micro-step.")
    eval_batch_size: PositiveInt = Field(64, description="Rows per worker per evaluation step.")


class DecodingSection(Section):
    """How generation tasks are decoded for evaluation (and the defaults of a served export)."""

    num_beams: PositiveInt = Field(
        1, le=16, description="Beam width (1: greedy, or sampling with do_sample)."
    )
    length_penalty: float = Field(1.0, description="Beam search: exponent on the length (>1 favours longer).")
    no_repeat_ngram_size: NonNegInt = Field(0, description="Never repeat an n-gram of this size (0: off).")
    do_sample: bool = Field(False, description="Sample instead of greedy/beam search.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature.")
    top_k: NonNegInt = Field(50, description="Sampling: keep the k likeliest tokens (0: all).")
    top_p: float = Field(1.0, gt=0, le=1, description="Sampling: nucleus mass kept.")
    seed: int = Field(0, description="Sampling seed (the same seed, the same text).")


class FinetuneCheckpoint(Section):
    every_n_epochs: PositiveInt = Field(
        1,
        description="Evaluate dev and checkpoint every N epochs (and at the end); a killed run resumes there.",
    )
    keep_last: PositiveInt = Field(1, description="Checkpoints kept per run.")
    max_failures: int = Field(
        2, ge=-1, description="Worker-group restarts from the last checkpoint; -1 = forever."
    )


class FinetuneConfig(Section):
    """Fine-tune and evaluate models on labelled tasks: every task x method x split, one table."""

    kind: Literal["finetune"] = "finetune"
    run: RunSection = Field(default_factory=RunSection, description="Name, storage and seed.")
    model: ModelSection = Field(
        default_factory=ModelSection,
        description="Starting point: model.from_pretrained (an exported folder) or a preset trained from scratch.",
    )
    tokenizer: TokenizerSection = Field(
        default_factory=TokenizerSection,
        description="Vocabulary for from-scratch models (an exported folder brings its own).",
    )
    task: FinetuneTasks = Field(default_factory=FinetuneTasks, description="Tasks, data and input shape.")
    task_specs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra tasks in a known shape: name -> TaskSpec fields (shape, path, text_fields, ...).",
    )
    decoding: DecodingSection = Field(
        default_factory=DecodingSection, description="Generation tasks: how dev and test are decoded."
    )
    methods: list[str] = Field(
        default_factory=lambda: ["head", "tfidf"],
        description="Fine-tuning methods, each run on every task and split. " + _methods_help() + ".",
    )

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, v: list[str]) -> list[str]:
        from fs_ray.objectives import get_method

        for name in v:
            get_method(name)
        return v

    optim: FinetuneOptim = Field(default_factory=FinetuneOptim, description="Optimizer and schedule.")
    deepspeed: DeepSpeedSection = Field(
        default_factory=DeepSpeedSection, description="DeepSpeed engine options."
    )
    scaling: ScalingSection = Field(default_factory=ScalingSection, description="Ray Train workers per run.")
    checkpoint: FinetuneCheckpoint = Field(
        default_factory=FinetuneCheckpoint, description="Per-run checkpoints and restarts."
    )
    submission_split: str = Field(
        "few_all",
        description="Split whose model predicts test.json for the submission files (FewCLUE: few_all).",
    )
    export: Literal["none", "submission", "all"] = Field(
        "submission",
        description="Which fine-tuned models are saved as Hugging Face folders: none, the submission split's, all.",
    )
    overwrite: bool = Field(
        False, description="Rerun task/method/split results already in the run folder (default: reuse them)."
    )
    per_task: dict[str, list[str]] = Field(
        default_factory=dict,
        description="Per-task overrides in --set form, e.g. {iflytek: [optim.epochs=3, task.max_len=256]}.",
    )

    @field_validator("submission_split", mode="before")
    @classmethod
    def _split_name_is_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) else v

    @model_validator(mode="after")
    def _specs_are_valid(self) -> FinetuneConfig:
        from fs_ray.data.tasks import TaskSpec

        for name, spec in self.task_specs.items():
            try:
                TaskSpec.model_validate(spec)
            except Exception as err:
                raise ValueError(f"task_specs.{name}: {err}") from None
        for name, overrides in self.per_task.items():
            if name not in self.task.names:
                raise ValueError(f"per_task.{name}: not among task.names {self.task.names}")
            keys = [o.split("=", 1)[0].strip() for o in overrides]
            if any(k in ("task.names", "per_task") or k.startswith(("run.", "tokenizer.")) for k in keys):
                raise ValueError(f"per_task.{name}: task.names, run.*, tokenizer.* and per_task are run-wide")
            try:
                self.for_task(name)
            except ConfigError as err:
                raise ValueError(f"per_task.{name}: {err}") from None
        return self

    def for_task(self, name: str) -> FinetuneConfig:
        """This config with ``per_task[name]`` applied (the config itself when there is none)."""
        from fs_ray.config import apply_overrides, validate

        if not self.per_task.get(name):
            return self
        data = apply_overrides(self.model_dump(mode="json"), self.per_task[name])
        data["per_task"] = {}
        return validate(FinetuneConfig, data, f"per_task.{name}")


# ----------------------------------------------------------------------------------------------
# tune: Ray Tune sweeps over finetune runs
# ----------------------------------------------------------------------------------------------
class SearchParam(Section):
    type: Literal["choice", "grid", "uniform", "loguniform", "randint"] = Field(description="Distribution.")
    values: list[Any] | None = Field(None, description="choice / grid: the candidates.")
    low: float | None = Field(None, description="uniform / loguniform / randint: lower bound.")
    high: float | None = Field(None, description="uniform / loguniform / randint: upper bound.")

    @model_validator(mode="after")
    def _complete(self) -> SearchParam:
        if self.type in ("choice", "grid"):
            if not self.values:
                raise ValueError(f"{self.type} needs a non-empty 'values' list")
        else:
            if self.low is None or self.high is None:
                raise ValueError(f"{self.type} needs 'low' and 'high'")
            if self.low >= self.high:
                raise ValueError(f"low ({self.low}) must be below high ({self.high})")
            if self.type == "loguniform" and self.low <= 0:
                raise ValueError("loguniform needs low > 0")
        return self


class AshaSection(Section):
    enabled: bool = Field(True, description="Stop weak trials early with ASHA (async successive halving).")
    grace_period: PositiveInt = Field(
        2, description="Epochs (summed over a trial's splits) every trial runs before it can be stopped."
    )
    reduction_factor: float = Field(
        2.0, gt=1, description="Keep the top 1/reduction_factor of trials at each rung."
    )


class TuneConfig(Section):
    """Sweep fine-tuning hyperparameters with Ray Tune: one experiment per task, every trial a
    fine-tuning run over the task's splits, ASHA on the running mean dev metric."""

    kind: Literal["tune"] = "tune"
    run: RunSection = Field(default_factory=RunSection, description="Name, storage and seed.")
    base: FinetuneConfig = Field(
        default_factory=FinetuneConfig,
        description="The finetune run each trial starts from (model, data, max_len, scaling, deepspeed, ...).",
    )
    tasks: list[str] = Field(default_factory=lambda: ["eprstmt"], description="Tasks to sweep, one by one.")
    splits: list[str] | None = Field(
        None,
        description="Splits every trial trains and scores; the objective is their mean dev metric. "
        "Default: the task's numbered splits (FewCLUE 0-4), or its only split.",
    )
    search_alg: Literal["random", "grid", "optuna"] = Field(
        "random",
        description="random and grid: Tune's variant generator (grid points x num_samples); optuna: TPE.",
    )
    search_space: dict[str, SearchParam] = Field(
        default_factory=dict,
        description="Dotted finetune field -> distribution, e.g. optim.lr: {type: loguniform, low: 1e-5, "
        "high: 1e-3}; `method` picks head or unimc; model.overrides.hidden_dropout_prob sets dropout.",
    )
    num_samples: PositiveInt = Field(8, description="Trials (per grid point for grid search).")
    asha: AshaSection = Field(default_factory=AshaSection, description="Early stopping.")
    max_concurrent_trials: PositiveInt | None = Field(
        None,
        description="Trials in flight at once. Default: how many trials' worker groups the cluster's "
        "CPUs (GPUs with scaling.use_gpu) hold at the start, so no trial driver waits idle.",
    )
    trial_max_failures: int = Field(
        1, ge=0, description="Times Tune restarts a failed trial (its Train run resumes from its checkpoint)."
    )
    export_best: bool = Field(
        True,
        description="After the sweep, fine-tune each task's best config on base.submission_split and export "
        "that model (and its submission file).",
    )
    overwrite: bool = Field(
        False, description="Start the sweep over instead of resuming one with the same run.name."
    )

    @field_validator("splits", mode="before")
    @classmethod
    def _split_names_are_text(cls, v: Any) -> Any:
        return [str(x) for x in v] if isinstance(v, list) else v

    @model_validator(mode="before")
    @classmethod
    def _base_runs_the_swept_tasks(cls, data: Any) -> Any:
        """base.task.names defaults to ``tasks`` (so base.per_task may name any swept task)."""
        if isinstance(data, dict) and isinstance(data.get("base"), dict):
            base = dict(data["base"])
            task = dict(base.get("task") or {})
            task.setdefault("names", list(data.get("tasks") or ["eprstmt"]))
            base["task"] = task
            data = {**data, "base": base}
        return data

    @field_validator("search_space")
    @classmethod
    def _space_is_usable(cls, space: dict[str, SearchParam], info: ValidationInfo) -> dict[str, SearchParam]:
        if not space:
            raise ValueError("empty: name at least one field to sweep")
        alg = info.data.get("search_alg")
        for key, param in space.items():
            if alg == "optuna" and param.type == "grid":
                raise ValueError(f"{key}: grid needs search_alg grid or random, not optuna")
            if alg == "grid" and param.type != "grid":
                raise ValueError(f"{key}: search_alg grid takes only grid parameters (got {param.type})")
        return space


# ----------------------------------------------------------------------------------------------
# serve: Ray Serve endpoints
# ----------------------------------------------------------------------------------------------
class ServeModels(Section):
    fill_mask: str | None = Field(
        None,
        description="Exported masked-LM folder (Erlangshen): /v1/fill-mask and UniMC zero-shot /v1/zero-shot.",
    )
    tasks: str | None = Field(
        None,
        description="A fine-tuned export (classifier, BIO tagger or generator), or a folder of them such as a "
        "fine-tuning run directory: each export is one model id (its path below this folder, '/' -> '-', "
        "e.g. csl_title-seq2seq-split_full), multiplexed on one deployment (/v1/classify, /v1/ner, /v1/generate, "
        "/v1/correct).",
    )
    default_task_model: str | None = Field(
        None, description="Model id used when a request names none (default: the first id, sorted)."
    )
    generate: str | None = Field(
        None,
        description="A pretrained causal LM (Wenzhong/Yuyuan GPT2) or seq2seq (Randeng T5/BART/Pegasus) folder: "
        "/v1/generate when a request names no fine-tuned generator.",
    )
    correct: str | None = Field(
        None,
        description="A Bigan folder (pretrained with the denoise objective, or released): /v1/correct when a "
        "request names no fine-tuned corrector (MLM-corrector and Bigan correction exports are in models.tasks).",
    )
    image_text: str | None = Field(
        None,
        description="A Taiyi export (the contrastive pretraining's export folder): /v1/image/embed, "
        "/v1/text/embed and zero-shot /v1/image/classify (its run's zero-shot classes and templates are the "
        "default labels).",
    )


class ServeBatching(Section):
    max_batch_size: PositiveInt = Field(
        16,
        description="@serve.batch: most requests the gateway groups into one call to a model replica, and the "
        "replica into one batch (1 turns batching off). A request may carry several texts (limits.max_items).",
    )
    batch_wait_timeout_s: float = Field(
        0.005,
        ge=0,
        description="@serve.batch at the gateway: longest wait for a batch to fill after its first request "
        "(replicas take what the gateway sends without waiting again).",
    )
    max_forward_texts: PositiveInt = Field(
        64, description="Most texts in one forward pass; a larger batch of texts runs in several passes."
    )
    max_ongoing_requests: PositiveInt = Field(
        64,
        description="Requests a model replica accepts at once; must be >= max_batch_size or batches never fill.",
    )


class ServeLimits(Section):
    max_input_chars: PositiveInt = Field(512, description="Longest text (characters) a request may carry.")
    overlong: Literal["reject", "truncate"] = Field(
        "reject", description="Longer texts: reject with 413, or cut to max_input_chars."
    )
    max_items: PositiveInt = Field(64, description="Most texts in one request (more: 413).")
    request_timeout_s: float = Field(
        60.0,
        gt=0,
        description="Longest a request may take end to end (HTTP 408 / gRPC DEADLINE_EXCEEDED after it): "
        "no client waits forever on a lost replica or a stuck model.",
    )
    replica_retries: NonNegInt = Field(
        2,
        description="Times a request is sent again when the model replica serving it dies mid-request "
        "(inference has no side effects, so a retry is safe; a stream is retried only before its first "
        "piece). Serve routes the retry to a live replica, or waits for the replacement. Then: 503.",
    )
    max_new_tokens: PositiveInt = Field(128, description="Upper bound on generate's max_new_tokens.")
    default_new_tokens: PositiveInt = Field(
        32,
        description="generate's max_new_tokens when a request gives none (a fine-tuned generation "
        "export: its task's max_target_len).",
    )
    max_beams: PositiveInt = Field(
        4, description="Upper bound on generate's num_beams (beam search cost grows with it)."
    )
    max_image_mb: float = Field(
        8.0, gt=0, description="Largest encoded image a request may carry (MB; more: 413)."
    )
    max_image_pixels: PositiveInt = Field(
        16 * 2**20,
        description="Most pixels an image may decode to (its header is read first; more: 413, image_too_large). "
        "A small file can decode to hundreds of MB: this, not max_image_mb, bounds a replica's memory.",
    )
    max_images: PositiveInt = Field(16, description="Most images in one request (more: 413).")
    max_labels: PositiveInt = Field(
        64,
        description="Most candidate labels, and most templates, in one image-classify request; labels x "
        "templates at most 4x this (more: 413).",
    )


class ServeReplicas(Section):
    min_replicas: NonNegInt = Field(1, description="Autoscaling lower bound per model deployment.")
    max_replicas: PositiveInt = Field(2, description="Autoscaling upper bound per model deployment.")
    target_ongoing_requests: float = Field(
        32.0, gt=0, description="Autoscaling target: ongoing requests per replica before adding one."
    )
    num_cpus: float = Field(1.0, ge=0, description="CPUs reserved by each model replica.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per model replica (fractions share a GPU).")
    torch_threads: NonNegInt = Field(0, description="torch threads per model replica (0: torch's default).")
    gateway_cpus: float = Field(
        0.1, ge=0, description="CPUs reserved by each gateway (HTTP/gRPC ingress) replica."
    )
    max_task_models: PositiveInt = Field(
        4, description="Fine-tuned models a replica keeps loaded (LRU: the least recently used is evicted)."
    )


class ServeConfig(Section):
    """Serve exported Hugging Face folders over HTTP and gRPC with Ray Serve."""

    kind: Literal["serve"] = "serve"
    name: str = Field("fs_ray", description="Serve application name (gRPC metadata `application`).")
    route_prefix: str = Field("/", description="HTTP route prefix of the application.")
    models: ServeModels = Field(default_factory=ServeModels, description="What to serve (at least one).")
    host: str = Field("127.0.0.1", description="HTTP bind address (0.0.0.0 to listen on every interface).")
    http_port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    grpc_port: int = Field(9000, ge=0, le=65535, description="gRPC port (0: no gRPC).")
    batching: ServeBatching = Field(default_factory=ServeBatching, description="Dynamic batching.")
    limits: ServeLimits = Field(default_factory=ServeLimits, description="Request limits (4xx past them).")
    replicas: ServeReplicas = Field(default_factory=ServeReplicas, description="Resources and autoscaling.")
    auth_token_env: str = Field(
        "FS_RAY_SERVE_TOKEN",
        description="Env var (on the replicas) holding a bearer token required on inference routes when set.",
    )
    auth_token_file: str | None = Field(
        None,
        description="File holding the bearer token (e.g. a mounted Kubernetes secret); wins over the env var.",
    )

    @field_validator("route_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with '/'")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ServeConfig:
        m = self.models
        if not (m.fill_mask or m.tasks or m.generate or m.correct or m.image_text):
            raise ValueError("models: give at least one of fill_mask, tasks, generate, correct, image_text")
        if self.batching.max_ongoing_requests < self.batching.max_batch_size:
            raise ValueError(
                f"batching.max_ongoing_requests ({self.batching.max_ongoing_requests}) must be >= "
                f"batching.max_batch_size ({self.batching.max_batch_size}), or batches can never fill"
            )
        if self.replicas.min_replicas > self.replicas.max_replicas:
            raise ValueError("replicas.min_replicas must be <= replicas.max_replicas")
        if self.limits.default_new_tokens > self.limits.max_new_tokens:
            raise ValueError("limits.default_new_tokens must be <= limits.max_new_tokens")
        return self


CONFIG_KINDS: dict[str, type[Section]] = {
    "prepare": PrepareConfig,
    "pretrain": PretrainConfig,
    "finetune": FinetuneConfig,
    "tune": TuneConfig,
    "serve": ServeConfig,
}


def load_any(path: str | Path, overrides: list[str] | None = None) -> Section:
    """Load a shipped YAML by its ``kind:`` field."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from None
    kind = raw.get("kind") if isinstance(raw, dict) else None
    if kind not in CONFIG_KINDS:
        raise ConfigError(f"{path}: 'kind' must be one of {sorted(CONFIG_KINDS)}, got {kind!r}")
    return load_config(CONFIG_KINDS[kind], path, overrides)
