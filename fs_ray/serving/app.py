"""The Ray Serve application: exported models behind one HTTP + gRPC gateway.

::

    HTTP (FastAPI, OpenAPI at /docs)  ┐                 ┌─► MaskedLM    fill-mask (batched), zero-shot
    gRPC (fs_ray/protos, port 9000)   ┴─► Gateway ──────┼─► TaskModels  fine-tuned classifiers/taggers:
      auth, validation, limits, page                    │               multiplexed by model id (LRU),
                                                        │               batched per model
                                                        └─► Generator   GPT2 / T5 generation

The gateway validates every request (the right 4xx, with the field named) before a model
replica sees it, so replicas only run well-formed batches and keep serving. Model deployments
autoscale between ``replicas.min_replicas`` and ``max_replicas``; ``@serve.batch`` collects up
to ``batching.max_batch_size`` requests per forward pass (``max_ongoing_requests`` is kept at
least that large so batches can fill). Models are plain Hugging Face folders: the pretraining
export (fill-mask, zero-shot, generation) and the fine-tuning exports (``fs_ray_task.json``
beside the weights says the task, labels and encoding).

Built by :func:`build_app` from a :class:`~fs_ray.run_configs.ServeConfig`; ``serve run`` /
``serve deploy`` use :func:`app_builder` (``serve/ray_serve.yaml``); ``serve/deploy.py`` deploys
to a running cluster.
"""

# no `from __future__ import annotations`: FastAPI must see real types on the ingress methods

import asyncio
import hmac
import os
from collections import Counter
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from fs_ray.run_configs import ServeBatching, ServeConfig
from fs_ray.serving.inference import MASK, generation_kind, read_config
from fs_ray.training.checkpoint import PREFIX as CHECKPOINT_PREFIX
from fs_ray.training.checkpoint import read_task_card
from fs_ray.training.export import PARTIAL

GRPC_SERVICER = "fs_ray.protos.fs_ray_serve_pb2_grpc.add_FsRayServicer_to_server"
MODEL_ID_HEADER = "serve_multiplexed_model_id"


class ServeError(Exception):
    """A request refused with an HTTP status (and the matching gRPC code)."""

    def __init__(self, status: int, field: str, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.status, self.field, self.message = status, field, message

    def body(self) -> dict[str, Any]:
        return {"error": str(self), "field": self.field}

    def __reduce__(self):  # crosses process boundaries whole (a streamed gRPC reply's error does)
        return ServeError, (self.status, self.field, self.message)


def _last_line(err: BaseException) -> str:
    """A replica error's own message, without Ray's remote traceback."""
    lines = [x for x in str(getattr(err, "cause", None) or err).strip().splitlines() if x.strip()]
    return lines[-1] if lines else type(err).__name__


def refused(err: BaseException) -> ServeError | None:
    """The 4xx (or 503) an error stands for: a :class:`ServeError` itself, or an
    :class:`~fs_ray.serving.inference.InputError` raised in the replica (Ray wraps it; its
    ``cause`` is the original), else None."""
    from fs_ray.serving.inference import InputError

    if isinstance(err, ServeError):
        return err
    cause = getattr(err, "cause", None) or err
    if isinstance(cause, InputError):
        return ServeError(cause.status, cause.field, cause.message)
    return None


# ---------------------------------------------------------------------------------------------
# model discovery (driver side, reads only small JSON files)
# ---------------------------------------------------------------------------------------------
def _kind(folder: str) -> str:
    from fs_ray.serving.inference import model_kind

    return model_kind(folder)


def discover_task_models(path: str) -> dict[str, dict[str, Any]]:
    """Model id -> {folder, kind, task, labels, shape} for a fine-tuned export or a tree of them
    (a folder of exports, or a fine-tuning run directory: ``<task>/<method>/split_<k>/export``):
    classifiers, taggers, fine-tuned generators (kind ``generator``, shape ``generation``) and
    correctors (kind ``corrector``, shape ``correction``: MLM correctors and Bigan rewriters)."""
    path = os.path.abspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"models.tasks: {path} is not a folder")
    found: dict[str, str] = {}
    if os.path.isfile(os.path.join(path, "config.json")):
        found[os.path.basename(path)] = path
    else:
        for root, dirs, files in os.walk(path):
            # only exports are models: a checkpoint (Ray Train's run folders) never is
            # (nor is an export still being written, or left by a killed export: <export>.partial-<pid>)
            dirs[:] = sorted(d for d in dirs if not d.startswith(CHECKPOINT_PREFIX) and PARTIAL not in d)
            if root[len(path) :].count(os.sep) > 5:
                dirs[:] = []
                continue
            if "config.json" in files and ("model.safetensors" in files or "pytorch_model.bin" in files):
                rel = os.path.relpath(root, path).removesuffix(os.sep + "export").removesuffix("export")
                found[(rel or os.path.basename(path)).strip(os.sep).replace(os.sep, "-")] = root
                dirs[:] = []
    models = {}
    for model_id, folder in sorted(found.items()):
        kind = _kind(folder)
        card = read_task_card(folder) or {}
        if card.get("shape") == "correction":  # fine-tuned for a correction task: served by /v1/correct
            kind = "corrector"  # an MLM corrector, a rewriter (clm) or a seq2seq corrector
        elif kind in ("clm", "seq2seq") and card.get("shape") == "generation":
            kind = "generator"  # fine-tuned for a generation task: served by /v1/generate
        elif kind not in ("classifier", "tagger"):
            continue  # e.g. a pretraining export next to fine-tuned ones
        config = read_config(folder)
        id2label = config.get("id2label") or {}
        labels = card.get("labels") or [id2label[k] for k in sorted(id2label, key=int)]
        models[model_id] = {
            "folder": folder,
            "kind": kind,
            "task": card.get("task", ""),
            "shape": card.get("shape", "tagging" if kind == "tagger" else "any"),  # released: no card
            "method": card.get("method", "head"),
            "labels": [str(x) for x in labels],
        }
    if not models:
        raise FileNotFoundError(
            f"models.tasks: no fine-tuned classifier, tagger, generator or corrector folder under {path}"
        )
    return models


# ---------------------------------------------------------------------------------------------
# model deployments
# ---------------------------------------------------------------------------------------------
def _deployment_options(cfg: ServeConfig, name: str) -> dict[str, Any]:
    r = cfg.replicas
    options: dict[str, Any] = {
        "name": name,
        "max_ongoing_requests": cfg.batching.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": r.num_cpus, "num_gpus": r.num_gpus},
        "health_check_period_s": 10,
    }
    if r.min_replicas == r.max_replicas:
        options["num_replicas"] = r.max_replicas
    else:
        options["autoscaling_config"] = {
            "min_replicas": r.min_replicas,
            "initial_replicas": max(1, r.min_replicas),
            "max_replicas": r.max_replicas,
            "target_ongoing_requests": r.target_ongoing_requests,
        }
    return options


def _device_setup(threads: int) -> None:
    from fs_ray.serving.inference import set_threads

    set_threads(threads or None)


def _flatten(calls: list[list[Any]]) -> tuple[list[Any], list[int]]:
    flat = [x for call in calls for x in call]
    return flat, [len(call) for call in calls]


def _unflatten(flat: list[Any], sizes: list[int]) -> list[list[Any]]:
    out, i = [], 0
    for n in sizes:
        out.append(flat[i : i + n])
        i += n
    return out


async def _per_text(fn, width: int, texts: list[list[str]], batches: Counter[int]) -> list[list[Any]]:
    """A batch of requests (each a list of texts) through ``fn`` as one flat list in passes of at
    most ``width`` texts, answered per request; ``batches`` counts the batch sizes."""
    flat, sizes = _flatten(texts)
    batches[len(flat)] += 1
    return _unflatten(await asyncio.to_thread(_chunked, fn, width, flat), sizes)


def _chunked(fn, width: int, flat: list[Any], pairs: list[Any] | None = None) -> list[Any]:
    """``fn`` over ``flat`` in forward passes of at most ``width`` texts (batching.max_forward_texts)."""
    out: list[Any] = []
    for i in range(0, len(flat), width):
        part = flat[i : i + width]
        out += fn(part) if pairs is None else fn(part, pairs[i : i + width])
    return out


def masked_lm_deployment(cfg: ServeConfig):
    b = cfg.batching

    @serve.deployment
    class MaskedLMServer:
        """Fill-mask (batched over requests) and UniMC zero-shot on one exported MLM."""

        def __init__(self, folder: str, threads: int):
            from fs_ray.serving.inference import MaskedLM

            _device_setup(threads)
            self.model = MaskedLM(folder)
            self.batches: Counter[int] = Counter()

        def info(self) -> dict[str, Any]:
            return {"id": self.model.name, "kind": "mlm", "batch_sizes": dict(self.batches)}

        @serve.batch(max_batch_size=b.max_batch_size, batch_wait_timeout_s=0)
        async def fill_mask(self, texts: list[list[str]], top_k: list[int]) -> list[list[Any]]:
            flat, sizes = _flatten(texts)
            self.batches[len(flat)] += 1
            k = max(top_k)
            result = await asyncio.to_thread(_chunked, lambda xs: self.model.fill_mask(xs, k), b.max_forward_texts, flat)
            per_call = _unflatten(result, sizes)
            return [[[m[:kk] for m in item] for item in call] for call, kk in zip(per_call, top_k, strict=True)]

        async def zero_shot(self, text: str, labels: list[str], question: str) -> list[tuple[str, float]]:
            return await asyncio.to_thread(self.model.zero_shot, text, labels, question)

    return MaskedLMServer


def task_models_deployment(cfg: ServeConfig):
    b = cfg.batching

    class _Loaded:
        """A loaded model; Serve calls ``__del__`` on LRU eviction (and GC may call it again)."""

        def __init__(self, model, on_evict):
            self.model, self._on_evict, self._gone = model, on_evict, False

        def __del__(self):
            if not self._gone:
                self._gone = True
                self._on_evict(self.model.name)

    @serve.deployment
    class TaskModels:
        """Fine-tuned exports multiplexed by model id: at most ``replicas.max_task_models`` stay
        loaded per replica (least recently used evicted); requests are batched per model."""

        def __init__(self, registry: dict[str, dict[str, Any]], threads: int):
            _device_setup(threads)
            self.registry = registry
            self.loads: Counter[str] = Counter()
            self.evictions: Counter[str] = Counter()
            self.batches: Counter[int] = Counter()
            self.streams = StreamStats()

        def _evicted(self, name: str) -> None:
            self.evictions[name] += 1

        @serve.multiplexed(max_num_models_per_replica=cfg.replicas.max_task_models)
        async def get_model(self, model_id: str) -> _Loaded:
            from fs_ray.serving.inference import Corrector, Generator, TaskModel

            info = self.registry[model_id]  # the gateway only sends known ids
            cls = {"generator": Generator, "corrector": Corrector}.get(info["kind"], TaskModel)
            model = await asyncio.to_thread(cls, info["folder"])
            self.loads[model_id] += 1
            return _Loaded(model, lambda _name, mid=model_id: self._evicted(mid))

        def info(self) -> dict[str, Any]:
            loaded = sorted(m for m in self.loads if self.loads[m] > self.evictions[m])
            return {
                "kind": "tasks",
                **self.streams.info(),
                "loaded": loaded,
                "loads": dict(self.loads),
                "evictions": dict(self.evictions),
                "batch_sizes": dict(self.batches),
                "pid": os.getpid(),
            }

        @serve.batch(max_batch_size=b.max_batch_size, batch_wait_timeout_s=0)
        async def classify(self, texts: list[list[str]], pairs: list[list[str] | None]) -> list[list[Any]]:
            # serve.batch splits batches by model id, so one batch is one model
            loaded = await self.get_model(serve.get_multiplexed_model_id())
            self.batches[sum(len(t) for t in texts)] += 1
            out: list[Any] = [None] * len(texts)
            # a released classifier (no task card) may get single texts and pairs in one batch
            for with_pairs in (False, True):
                calls = [i for i, p in enumerate(pairs) if (p is not None) == with_pairs]
                if not calls:
                    continue
                flat, sizes = _flatten([texts[i] for i in calls])
                args = (flat, [p for i in calls for p in pairs[i]]) if with_pairs else (flat,)
                result = await asyncio.to_thread(_chunked, loaded.model.classify, b.max_forward_texts, *args)
                for i, part in zip(calls, _unflatten(result, sizes), strict=True):
                    out[i] = part
            return out

        @serve.batch(max_batch_size=b.max_batch_size, batch_wait_timeout_s=0)
        async def tag(self, texts: list[list[str]]) -> list[list[Any]]:
            loaded = await self.get_model(serve.get_multiplexed_model_id())
            return await _per_text(loaded.model.tag, b.max_forward_texts, texts, self.batches)

        @serve.batch(max_batch_size=b.max_batch_size, batch_wait_timeout_s=0)
        async def correct(self, texts: list[list[str]]) -> list[list[Any]]:
            loaded = await self.get_model(serve.get_multiplexed_model_id())
            return await _per_text(loaded.model.correct, b.max_forward_texts, texts, self.batches)

        async def generate(self, prompts: list[str], max_new_tokens: int, settings: dict[str, Any]) -> list[str]:
            loaded = await self.get_model(serve.get_multiplexed_model_id())
            return await asyncio.to_thread(loaded.model.generate_batch, prompts, max_new_tokens, settings)

        async def generate_stream(self, prompt: str, max_new_tokens: int, settings: dict[str, Any]):
            loaded = await self.get_model(serve.get_multiplexed_model_id())
            async for piece in stream_pieces(loaded.model, prompt, max_new_tokens, settings, self.streams):
                yield piece

        async def defaults(self) -> dict[str, Any]:
            loaded = await self.get_model(serve.get_multiplexed_model_id())
            return {"max_new_tokens": loaded.model.default_new_tokens}

    return TaskModels


class StreamStats:
    """What the streams of a replica did: started, finished, stopped because the client went away,
    and the tokens the last one generated (``/readyz`` shows them)."""

    def __init__(self):
        self.started = self.finished = self.cancelled = self.failed = self.last_tokens = 0

    def info(self) -> dict[str, int]:
        return {"streams_started": self.started, "streams_finished": self.finished,
                "streams_cancelled": self.cancelled, "streams_failed": self.failed,
                "last_stream_tokens": self.last_tokens}  # fmt: skip


async def stream_pieces(model, prompt: str, max_new_tokens: int, settings: dict[str, Any], stats: StreamStats):
    """``{"text": piece, "tokens": n}`` as ``model.stream`` produces them. The generation runs in a
    thread; when the request is cancelled (the client disconnected) the thread is told to stop at
    its next token, so no work continues for nobody."""
    import queue
    import threading

    from fs_ray.serving.inference import InputError

    cancelled = threading.Event()
    pieces: queue.Queue = queue.Queue()
    done = object()

    def work() -> None:
        try:
            for piece, n in model.stream(prompt, max_new_tokens, settings, cancelled):
                if cancelled.is_set():
                    break  # nobody reads on: leaving the stream stops the generation
                stats.last_tokens = n
                pieces.put({"text": piece, "tokens": n})
        except BaseException as err:  # a bad request (InputError) or a failed generation: the caller's
            pieces.put(err)
        finally:
            pieces.put(done)

    stats.started += 1
    stats.last_tokens = 0
    thread = threading.Thread(target=work, daemon=True, name="fs_ray-stream")
    thread.start()
    ended = False
    try:
        while (item := await asyncio.to_thread(pieces.get)) is not done:
            if isinstance(item, BaseException):
                ended = True
                stats.failed += 1
                raise item if isinstance(item, InputError) else RuntimeError(f"generation failed: {item}")
            yield item
        ended = True
        stats.finished += 1
    finally:
        if not ended:  # the request was cancelled: the client went away
            cancelled.set()
            stats.cancelled += 1


@serve.deployment
class GeneratorServer:
    """Text generation, one request at a time per replica (sampling settings differ per request)."""

    def __init__(self, folder: str, threads: int):
        from fs_ray.serving.inference import Generator

        _device_setup(threads)
        self.model = Generator(folder)
        self.streams = StreamStats()

    def info(self) -> dict[str, Any]:
        return {"id": self.model.name, "kind": self.model.kind, **self.streams.info()}

    async def generate(self, prompts: list[str], max_new_tokens: int, settings: dict[str, Any]) -> list[str]:
        return await asyncio.to_thread(self.model.generate_batch, prompts, max_new_tokens, settings)

    async def generate_stream(self, prompt: str, max_new_tokens: int, settings: dict[str, Any]):
        async for piece in stream_pieces(self.model, prompt, max_new_tokens, settings, self.streams):
            yield piece

    async def defaults(self) -> dict[str, Any]:
        return {"max_new_tokens": self.model.default_new_tokens}


def corrector_deployment(cfg: ServeConfig):
    b = cfg.batching

    @serve.deployment
    class CorrectorServer:
        """A pretrained or released Bigan correcting by rewriting (models.correct); requests batched."""

        def __init__(self, folder: str, threads: int):
            from fs_ray.serving.inference import Corrector

            _device_setup(threads)
            self.model = Corrector(folder)
            self.batches: Counter[int] = Counter()

        def info(self) -> dict[str, Any]:
            return {"id": self.model.name, "kind": "corrector", "batch_sizes": dict(self.batches)}

        @serve.batch(max_batch_size=b.max_batch_size, batch_wait_timeout_s=b.batch_wait_timeout_s)
        async def correct(self, texts: list[list[str]]) -> list[list[Any]]:
            return await _per_text(self.model.correct, b.max_forward_texts, texts, self.batches)

    return CorrectorServer


@serve.deployment
class ImageTextServer:
    """A Taiyi export: image and text embeddings, zero-shot image classification. One call per
    request (a request carries up to ``limits.max_images`` images, embedded in one forward pass):
    an image that cannot be decoded refuses its own request only."""

    def __init__(self, folder: str, threads: int, max_image_bytes: int, max_image_pixels: int):
        from fs_ray.serving.inference import ImageText

        _device_setup(threads)
        self.model = ImageText(folder, max_image_bytes=max_image_bytes, max_image_pixels=max_image_pixels)
        self.calls: Counter[str] = Counter()

    def info(self) -> dict[str, Any]:
        m = self.model
        return {"id": m.name, "kind": "image_text", "image_size": m.image_size, "dim": m.dim,
                "classes": m.classes, "templates": m.templates, "calls": dict(self.calls)}  # fmt: skip

    async def _run(self, name: str, *args: Any) -> Any:
        """The model's answer, or ``{"refused": ...}`` for an input it cannot use (a user's bad
        image is a 4xx to send back, not an error for the replica's log)."""
        from fs_ray.serving.inference import InputError

        self.calls[name] += 1
        try:
            return await asyncio.to_thread(getattr(self.model, name), *args)
        except InputError as err:
            self.calls["refused"] += 1
            return {"refused": [err.status, err.field, err.message]}

    async def embed_images(self, images: list[bytes]) -> Any:
        return await self._run("embed_images", images)

    async def embed_texts(self, texts: list[str]) -> Any:
        return await self._run("embed_texts", texts)

    async def classify(self, images: list[bytes], labels: list[str], templates: list[str]) -> Any:
        return await self._run("classify", images, labels, templates)


# ---------------------------------------------------------------------------------------------
# HTTP schema
# ---------------------------------------------------------------------------------------------
TextOrTexts = str | list[str]


class TokenScore(BaseModel):
    token: str
    score: float


class FillMaskRequest(BaseModel):
    text: TextOrTexts = Field(..., description=f"A text (or a list of texts) with one or more {MASK}.")
    top_k: int = Field(5, ge=1, le=50, description="Guesses per [MASK].")


class FillMaskResult(BaseModel):
    masks: list[list[TokenScore]] = Field(..., description="Per [MASK], left to right: guesses, best first.")


class FillMaskResponse(BaseModel):
    model: str
    results: list[FillMaskResult]


class LabelScore(BaseModel):
    label: str
    score: float


class ClassifyRequest(BaseModel):
    text: TextOrTexts = Field(..., description="A text or a list of texts.")
    text_pair: TextOrTexts | None = Field(None, description="Second sentences, for sentence-pair models.")
    model: str | None = Field(
        None, description=f"Model id (GET /v1/models); else the {MODEL_ID_HEADER} header, else the default."
    )


class ClassifyResult(BaseModel):
    label: str
    scores: list[LabelScore] = Field(..., description="Every label with its probability, best first.")


class ClassifyResponse(BaseModel):
    model: str
    results: list[ClassifyResult]


class ZeroShotRequest(BaseModel):
    text: str = Field(..., description="The text to classify.")
    labels: list[str] = Field(..., description="Candidate labels (2 to 64).")
    question: str = Field("", description="Optional prompt before the text, e.g. 这条新闻的主题是？")


class ZeroShotResponse(BaseModel):
    model: str
    label: str
    scores: list[LabelScore]


class NerRequest(BaseModel):
    text: TextOrTexts
    model: str | None = None


class Entity(BaseModel):
    type: str
    start: int = Field(..., description="Character offset of the first character.")
    end: int = Field(..., description="Character offset after the last character.")
    text: str


class NerResult(BaseModel):
    entities: list[Entity]


class NerResponse(BaseModel):
    model: str
    results: list[NerResult]


class GenerateRequest(BaseModel):
    prompt: TextOrTexts = Field(description="A prompt, or several decoded as one batch (not with stream).")
    model: str | None = Field(None, description="A fine-tuned generator's id; default: models.generate.")
    max_new_tokens: int | None = Field(
        None, ge=1, description="Default: the fine-tuned task's max_target_len, else limits.default_new_tokens."
    )
    temperature: float = Field(0.0, ge=0.0, le=5.0, description="0: greedy (or beam) decoding; above: sampling.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass (with temperature > 0).")
    top_k: int | None = Field(None, ge=0, description="Sampling: keep the k likeliest tokens.")
    seed: int = Field(0, description="Sampling seed: the same seed gives the same text.")
    num_beams: int | None = Field(None, ge=1, description="Beam width (at most limits.max_beams).")
    length_penalty: float | None = Field(None, description="Beam search length exponent.")
    no_repeat_ngram_size: int | None = Field(None, ge=0, description="Never repeat an n-gram of this size.")
    stream: bool = Field(False, description="Server-sent events: one `data:` event per piece of text, then `event: done`.")


class GenerateResponse(BaseModel):
    model: str
    text: str
    texts: list[str]


class CorrectRequest(BaseModel):
    text: TextOrTexts = Field(description="A text, or several corrected as one batch.")
    model: str | None = Field(None, description="A fine-tuned corrector's id; default: models.correct.")


class Change(BaseModel):
    position: int = Field(..., description="Character offset into the request's text.")
    original: str = Field(..., description="The text there (empty: an insertion before position).")
    corrected: str = Field(..., description="What the model writes instead (empty: a deletion).")


class CorrectResult(BaseModel):
    text: str = Field(..., description="The corrected text.")
    changes: list[Change]


class CorrectResponse(BaseModel):
    model: str
    results: list[CorrectResult]


class TextEmbedRequest(BaseModel):
    text: TextOrTexts = Field(..., description="A text or a list of texts (at most limits.max_items).")


class EmbedResponse(BaseModel):
    model: str
    dim: int = Field(..., description="Embedding size (the shared image-text space).")
    embeddings: list[list[float]] = Field(..., description="One L2-normalised vector per input, in order.")


class ImageClassifyResponse(BaseModel):
    model: str
    results: list[ClassifyResult] = Field(..., description="One per image: best label, every label best first.")


def _image_body(with_labels: bool) -> dict[str, Any]:
    """The OpenAPI request body of an image route: JSON with base64 images, or a multipart form."""
    images = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
              "description": "Base64 of an encoded image (PNG, JPEG, GIF, BMP, WebP, TIFF; a data: URL "
                             "prefix is allowed), or a list of them"}  # fmt: skip
    json_props: dict[str, Any] = {"image": images}
    form_props: dict[str, Any] = {"image": {"type": "array", "items": {"type": "string", "format": "binary"}}}
    if with_labels:
        labels = {"type": "array", "items": {"type": "string"},
                  "description": "Candidate labels (default: the model's own zero-shot classes)"}  # fmt: skip
        templates = {"type": "array", "items": {"type": "string"},
                     "description": "Prompt templates with {} for the label (default: the model's own)"}  # fmt: skip
        json_props.update(labels=labels, templates=templates)
        form_props.update(
            labels={"type": "string", "description": "Labels, comma separated (or the field repeated)"},
            templates={"type": "string", "description": "Templates, one per line (or the field repeated)"},
        )
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"type": "object", "required": ["image"], "properties": json_props}},
                "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": form_props}},
            },
        }
    }


api = FastAPI(
    title="fs_ray",
    version="1",
    description="Fengshenbang-style Chinese models served by Ray Serve: fill-mask, classification, "
    "zero-shot classification, NER and generation. Send `Authorization: Bearer <token>` when the "
    "server has a token set.",
)


@api.exception_handler(RequestValidationError)
async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    problems, fields = [], []
    status = 422
    for err in exc.errors():
        if err.get("type") == "json_invalid":  # not JSON at all, or not UTF-8
            status = 400
            fields.append("body")
            problems.append(f"body: malformed JSON: {err.get('ctx', {}).get('error', err.get('msg'))}")
            continue
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        fields.append(where)
        problems.append(f"{where}: {err.get('msg')}")
    # the same shape as every other refusal (ServeError.body): the message, and the field it names
    return JSONResponse(status_code=status, content={"error": "; ".join(problems), "field": fields[0] if fields else "body"})


@api.exception_handler(StarletteHTTPException)
async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own refusals (a body it cannot parse, e.g. invalid UTF-8; an unknown route) in
    the same {error, field} shape as every other."""
    if exc.status_code == 400:
        body = {"error": f"body: malformed JSON: {exc.detail}", "field": "body"}
    else:
        body = {"error": str(exc.detail), "field": "path" if exc.status_code in (404, 405) else "body"}
    return JSONResponse(status_code=exc.status_code, content=body, headers=getattr(exc, "headers", None))


@api.exception_handler(ServeError)
async def _serve_error(_request: Request, exc: ServeError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse(status_code=exc.status, content=exc.body(), headers=headers)


@api.exception_handler(Exception)
async def _internal_error(_request: Request, exc: Exception) -> JSONResponse:
    """Anything else is the server's fault: a 500 in the same JSON shape as every other error
    (Serve logs the traceback)."""
    return JSONResponse(status_code=500, content={"error": f"internal error: {_last_line(exc)}", "field": ""})


def _page() -> str:
    return resources.files("fs_ray").joinpath("assets/serve/index.html").read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# the gateway (ingress): HTTP routes and gRPC methods over the same core
# ---------------------------------------------------------------------------------------------
GRPC_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 413: "RESOURCE_EXHAUSTED",
              415: "INVALID_ARGUMENT", 422: "INVALID_ARGUMENT", 503: "UNAVAILABLE"}


@serve.deployment
@serve.ingress(api)
class Gateway:
    def __init__(
        self,
        cfg: dict[str, Any],
        fill_mask: DeploymentHandle | None,
        tasks: DeploymentHandle | None,
        generator: DeploymentHandle | None,
        registry: dict[str, dict[str, Any]],
        names: dict[str, str],
        corrector: DeploymentHandle | None = None,
        image_text: DeploymentHandle | None = None,
    ):
        self.cfg = ServeConfig.model_validate(cfg)
        self.fill_mask_h, self.tasks_h, self.generator_h = fill_mask, tasks, generator
        self.corrector_h, self.image_text_h = corrector, image_text
        self.registry = registry
        self.names = names
        self.default_model = self.cfg.models.default_task_model or (sorted(registry)[0] if registry else None)
        self.token = self._read_token()
        self.replica_loss: Counter[str] = Counter()  # calls sent again / given up after a replica died
        self._forward.set_max_batch_size(self.cfg.batching.max_batch_size)
        self._forward.set_batch_wait_timeout_s(self.cfg.batching.batch_wait_timeout_s)

    # The decorator needs values at import; __init__ sets the deployed config's (Ray's setters)
    @serve.batch(
        max_batch_size=ServeBatching.model_fields["max_batch_size"].default,
        batch_wait_timeout_s=ServeBatching.model_fields["batch_wait_timeout_s"].default,
    )
    async def _forward(self, keys: list[tuple[str, str]], texts: list[list[str]], extras: list[Any]) -> list[Any]:
        """Requests that arrive together go to their model deployment as one call per (operation,
        model id): one hop and one forward pass for the batch instead of one per request."""
        groups: dict[tuple[str, str], list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)
        out: list[Any] = [None] * len(keys)

        async def send(key: tuple[str, str], idx: list[int]) -> None:
            op, model_id = key
            flat = [t for i in idx for t in texts[i]]
            if op == "fill_mask":
                top_k = max(extras[i] for i in idx)
                result = await self._call(op, lambda: self.fill_mask_h.fill_mask.remote(flat, top_k))
            else:
                handle = getattr(self.tasks_h.options(multiplexed_model_id=model_id), op)
                pairs = None if extras[idx[0]] is None else [p for i in idx for p in extras[i]]
                result = await self._call(
                    f"{op} ({model_id})", lambda: handle.remote(flat, pairs) if op == "classify" else handle.remote(flat)
                )
            pos = 0
            for i in idx:
                part, pos = result[pos : pos + len(texts[i])], pos + len(texts[i])
                out[i] = [[m[: extras[i]] for m in item] for item in part] if op == "fill_mask" else part

        await asyncio.gather(*(send(k, idx) for k, idx in groups.items()))
        return out

    async def _call(self, what: str, make) -> Any:
        """``await make()`` (one call to a model deployment), made again when the replica serving it
        dies mid-request: inference has no side effects, so a retry is safe, and Serve routes it to a
        live replica or waits for the one replacing it. After ``limits.replica_retries`` retries, a
        503 naming the operation. An error the model raised is not retried."""
        retries = self.cfg.limits.replica_retries
        for attempt in range(retries + 1):
            try:
                return await make()
            except (ActorDiedError, ActorUnavailableError):
                await self._replica_lost(f"{what}: the model replica died mid-request, {attempt + 1} time(s)",
                                         attempt, give_up=attempt == retries)  # fmt: skip

    async def _replica_lost(self, what: str, attempt: int, give_up: bool) -> None:
        """A call cut short by a dying model replica: counted (``/readyz``), then a 503 when it is
        given up, else a short back-off before it is sent again."""
        self.replica_loss["failed" if give_up else "retried"] += 1
        if give_up:
            raise ServeError(503, "model", f"{what}; Serve is replacing it, try again shortly")
        await asyncio.sleep(min(0.1 * 2**attempt, 1.0))

    def _read_token(self) -> str | None:
        if self.cfg.auth_token_file:
            with open(self.cfg.auth_token_file, encoding="utf-8") as f:
                token = f.read().strip()
        else:
            token = os.environ.get(self.cfg.auth_token_env, "").strip()
        return token or None

    # ---- checks shared by HTTP and gRPC -----------------------------------------------------
    def _auth(self, authorization: str | None) -> None:
        if self.token is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), self.token.encode()):
            raise ServeError(401, "authorization", "missing or wrong bearer token")

    def _texts(self, value: Any, field: str = "text") -> list[str]:
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise ServeError(422, field, "must be a string or a list of strings")
        lim = self.cfg.limits
        if not texts:
            raise ServeError(422, field, "no text given")
        if len(texts) > lim.max_items:
            raise ServeError(413, field, f"{len(texts)} texts in one request; the limit is {lim.max_items}")
        out = []
        for i, t in enumerate(texts):
            name = field if isinstance(value, str) else f"{field}[{i}]"
            if not t.strip():
                raise ServeError(422, name, "empty text")
            if len(t) > lim.max_input_chars:
                if lim.overlong == "reject":
                    raise ServeError(
                        413, name, f"{len(t)} characters; the limit is {lim.max_input_chars} (limits.max_input_chars)"
                    )
                t = t[: lim.max_input_chars]
            out.append(t)
        return out

    def _need(self, handle, what: str):
        if handle is None:
            raise ServeError(404, "", f"this server has no {what} model (models.{what} is not set)")
        return handle

    def _task_model(self, requested: str | None, header: str | None, kind: str) -> str:
        self._need(self.tasks_h, "tasks")
        model_id = requested or header or self.default_model
        if model_id not in self.registry:
            known = ", ".join(sorted(self.registry))
            raise ServeError(404, "model", f"unknown model id {model_id!r} (known: {known})")
        if self.registry[model_id]["kind"] != kind:
            have = self.registry[model_id]["kind"]
            route = {"classifier": "classify", "tagger": "ner", "generator": "generate", "corrector": "correct"}[have]
            raise ServeError(422, "model", f"{model_id} is a {have}; use /v1/{route}")
        return model_id

    # ---- the operations ---------------------------------------------------------------------
    async def _fill_mask(self, text: Any, top_k: int) -> dict[str, Any]:
        self._need(self.fill_mask_h, "fill_mask")
        texts = self._texts(text)
        for i, t in enumerate(texts):
            if MASK not in t:
                raise ServeError(422, "text" if isinstance(text, str) else f"text[{i}]", f"has no {MASK} to fill")
        result = await self._forward(("fill_mask", ""), texts, top_k)
        return {
            "model": self.names["fill_mask"],
            "results": [
                {"masks": [[{"token": tok, "score": s} for tok, s in mask] for mask in item]} for item in result
            ],
        }

    async def _classify(self, text: Any, text_pair: Any, model: str | None, header: str | None) -> dict[str, Any]:
        model_id = self._task_model(model, header, "classifier")
        texts = self._texts(text)
        shape = self.registry[model_id]["shape"]
        pairs = None
        if text_pair is not None and text_pair != []:
            pairs = self._texts(text_pair, "text_pair")
            if len(pairs) != len(texts):
                raise ServeError(422, "text_pair", f"{len(pairs)} second sentences for {len(texts)} texts")
        if shape == "pair" and pairs is None:
            raise ServeError(422, "text_pair", f"{model_id} is a sentence-pair model: give text_pair")
        if shape == "single" and pairs is not None:
            raise ServeError(422, "text_pair", f"{model_id} is a single-sentence model: drop text_pair")
        result = await self._forward(("classify", model_id), texts, pairs)
        return {
            "model": model_id,
            "results": [
                {"label": label, "scores": [{"label": lb, "score": s} for lb, s in scores]} for label, scores in result
            ],
        }

    async def _zero_shot(self, text: Any, labels: Any, question: str) -> dict[str, Any]:
        handle = self._need(self.fill_mask_h, "fill_mask")
        if not isinstance(text, str):
            raise ServeError(422, "text", "must be a string")
        (text,) = self._texts(text)
        if not isinstance(labels, list) or len(labels) < 2:
            raise ServeError(422, "labels", "give at least two candidate labels")
        if len(labels) > 64:
            raise ServeError(413, "labels", f"{len(labels)} candidate labels; the limit is 64")
        cleaned = [lb.strip() if isinstance(lb, str) else "" for lb in labels]
        if not all(cleaned):
            raise ServeError(422, "labels", "every candidate label must be a non-empty string")
        if len(set(cleaned)) != len(cleaned):
            raise ServeError(422, "labels", "candidate labels must differ")
        if len(question) > self.cfg.limits.max_input_chars:
            raise ServeError(413, "question", f"longer than {self.cfg.limits.max_input_chars} characters")
        ranked = await self._call("zero_shot", lambda: handle.zero_shot.remote(text, cleaned, question))
        return {
            "model": self.names["fill_mask"],
            "label": ranked[0][0],
            "scores": [{"label": lb, "score": s} for lb, s in ranked],
        }

    async def _ner(self, text: Any, model: str | None, header: str | None) -> dict[str, Any]:
        model_id = self._task_model(model, header, "tagger")
        texts = self._texts(text)
        result = await self._forward(("tag", model_id), texts, None)
        return {"model": model_id, "results": [{"entities": ents} for ents in result]}

    async def _generation(self, body: GenerateRequest, header: str | None, stream: bool):
        """(handle, model id, prompts, max_new_tokens, settings) of a generate request, every limit
        checked: a fine-tuned generator when one is named (``model`` or the multiplexing header),
        else the pretrained one (models.generate)."""
        named = body.model or header
        pretrained = self.generator_h is not None and named in (None, "", self.names.get("generate"))
        if not pretrained:
            if not named:  # no pretrained generator: the default model if it generates, else the first that does
                gens = sorted(m for m, info in self.registry.items() if info["kind"] == "generator")
                if not gens:
                    raise ServeError(404, "model", "this server has no generator (models.generate is not set "
                                     "and models.tasks holds no fine-tuned generator)")  # fmt: skip
                named = self.default_model if self.default_model in gens else gens[0]
            model_id = self._task_model(named, None, "generator")
            handle = self.tasks_h.options(multiplexed_model_id=model_id)
        else:
            handle, model_id = self._need(self.generator_h, "generate"), self.names["generate"]
        prompts = self._texts(body.prompt, "prompt")
        if stream and len(prompts) > 1:
            raise ServeError(422, "prompt", "a streamed request carries one prompt")
        lim = self.cfg.limits
        # unset: a fine-tuned task's max_target_len (never past the limit), else the server default
        card_default = (await self._call("generate", handle.defaults.remote))["max_new_tokens"]
        n = body.max_new_tokens or (min(card_default, lim.max_new_tokens) if card_default else lim.default_new_tokens)
        if n > lim.max_new_tokens:
            raise ServeError(413, "max_new_tokens", f"{n} > limits.max_new_tokens ({lim.max_new_tokens})")
        beams = body.num_beams or 1
        if beams > lim.max_beams:
            raise ServeError(413, "num_beams", f"{beams} > limits.max_beams ({lim.max_beams})")
        if stream and beams > 1:
            raise ServeError(422, "num_beams", "streaming decodes token by token: num_beams must be 1")
        settings: dict[str, Any] = {"seed": body.seed}
        if body.temperature > 0:
            settings.update(do_sample=True, temperature=body.temperature, top_p=body.top_p)
        for key in ("top_k", "num_beams", "length_penalty", "no_repeat_ngram_size"):
            if getattr(body, key) is not None:
                settings[key] = getattr(body, key)
        return handle, model_id, prompts, n, settings

    async def _generate(self, body: GenerateRequest, header: str | None) -> dict[str, Any]:
        handle, model_id, prompts, n, settings = await self._generation(body, header, stream=False)
        try:
            texts = await self._call(f"generate ({model_id})", lambda: handle.generate.remote(prompts, n, settings))
        except Exception as err:
            raise refused(err) or err from None
        return {"model": model_id, "text": texts[0], "texts": texts}

    async def _generate_stream(self, body: GenerateRequest, header: str | None):
        """(model id, async iterator of ``{"text", "tokens"}`` pieces); checks run before it starts."""
        handle, model_id, prompts, n, settings = await self._generation(body, header, stream=True)
        start = lambda: handle.options(stream=True).generate_stream.remote(prompts[0], n, settings)  # noqa: E731
        return model_id, self._stream(f"generate ({model_id})", start)

    async def _stream(self, what: str, start):
        """The pieces of ``start()`` (a streaming call), started again when the replica dies before
        the first piece (as :meth:`_call`); once a piece is out, a lost replica ends the stream with
        a 503. A consumer that stops early cancels the call."""
        retries = self.cfg.limits.replica_retries
        for attempt in range(retries + 1):
            pieces, sent, done = start(), False, False
            try:
                async for piece in pieces:
                    sent = True
                    yield piece
                done = True
                return
            except (ActorDiedError, ActorUnavailableError):
                done = True
                await self._replica_lost(f"{what}: the model replica died mid-stream (try {attempt + 1})",
                                         attempt, give_up=sent or attempt == retries)  # fmt: skip
            finally:
                if not done:  # the consumer stopped (a client that went away): stop the generation
                    pieces.cancel()

    async def _correct(self, text: Any, model: str | None, header: str | None) -> dict[str, Any]:
        """A fine-tuned corrector when one is named (``model`` or the multiplexing header), else the
        pretrained one (models.correct), else the default task model if it corrects."""
        texts = self._texts(text)
        named = model or header
        if self.corrector_h is not None and named in (None, "", self.names.get("correct")):
            result = await self._call("correct", lambda: self.corrector_h.correct.remote(texts))
            return {"model": self.names["correct"], "results": result}
        if not named:
            found = sorted(m for m, info in self.registry.items() if info["kind"] == "corrector")
            if not found:
                raise ServeError(404, "model", "this server has no corrector (models.correct is not set and "
                                 "models.tasks holds no fine-tuned corrector)")  # fmt: skip
            named = self.default_model if self.default_model in found else found[0]
        model_id = self._task_model(named, None, "corrector")
        return {"model": model_id, "results": await self._forward(("correct", model_id), texts, None)}

    # ---- images (Taiyi) ------------------------------------------------------------------------
    def _image_list(self, images: list[bytes]) -> list[bytes]:
        lim = self.cfg.limits
        if not images:
            raise ServeError(422, "image", "no image given")
        if len(images) > lim.max_images:
            raise ServeError(413, "image", f"{len(images)} images in one request; the limit is {lim.max_images}")
        limit = int(lim.max_image_mb * 2**20)
        for i, data in enumerate(images):
            name = "image" if len(images) == 1 else f"image[{i}]"
            if not data:
                raise ServeError(422, name, "empty file")
            if len(data) > limit:
                raise ServeError(
                    413, name, f"{len(data):,} bytes; the limit is {lim.max_image_mb:g} MB (limits.max_image_mb)"
                )
        return images

    def _base64_images(self, value: Any) -> list[bytes]:
        import base64
        import binascii

        items = [value] if isinstance(value, str) else value
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            raise ServeError(422, "image", "must be a base64 string or a list of them (or upload files as multipart)")
        if len(items) > self.cfg.limits.max_images:
            raise ServeError(413, "image", f"{len(items)} images in one request; the limit is {self.cfg.limits.max_images}")
        out = []
        for i, item in enumerate(items):
            name = "image" if isinstance(value, str) else f"image[{i}]"
            data = item.split(",", 1)[1] if item.startswith("data:") and "," in item else item
            try:
                out.append(base64.b64decode("".join(data.split()), validate=True))
            except (binascii.Error, ValueError):
                raise ServeError(422, name, "not valid base64") from None
        return out

    @staticmethod
    def _split(values: list[str], multiline: bool) -> list[str]:
        """One form field split (labels on commas or lines, templates on lines); a repeated field
        is taken as given, one value each (so a label may hold a comma)."""
        import re

        if len(values) > 1:
            return [v.strip() for v in values]
        sep = r"[\r\n]+" if multiline else r"[,，\r\n]+"
        return [x.strip() for v in values for x in re.split(sep, v) if x.strip()]

    async def _image_request(self, request: Request) -> dict[str, Any]:
        """``{image, labels, templates}`` of an image route: a JSON body (base64 images, label and
        template lists) or a multipart form (``image`` files, ``labels`` comma separated or
        repeated, ``templates`` one per line or repeated). The body's size is checked first."""
        import json

        lim = self.cfg.limits
        most = lim.max_images * int(lim.max_image_mb * 2**20) * 4 // 3 + 2**20  # base64 + the rest
        too_big = (f"at most {lim.max_images} images of {lim.max_image_mb:g} MB each "
                   "(limits.max_images, limits.max_image_mb)")  # fmt: skip
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > most:
            raise ServeError(413, "body", f"{int(length):,} bytes; {too_big}")
        buffer = bytearray()  # read with the same bound when no length is sent (chunked uploads)
        async for chunk in request.stream():
            buffer += chunk
            if len(buffer) > most:
                raise ServeError(413, "body", f"more than {most:,} bytes; {too_big}")
        data = bytes(buffer)
        del buffer
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            from starlette.requests import Request as Buffered

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": data, "more_body": False}

            try:
                form = await Buffered(request.scope, receive).form(
                    max_files=lim.max_images, max_fields=2 * lim.max_labels + 8
                )
            except StarletteHTTPException as err:  # a malformed form, or past the field/file counts
                if "Too many files" in str(err.detail):
                    raise ServeError(413, "image", f"{err.detail} (limits.max_images)") from None
                raise ServeError(400, "body", f"cannot read the multipart form: {err.detail}") from None
            try:
                images = []
                for item in form.getlist("image"):
                    if isinstance(item, str):
                        raise ServeError(422, "image", "send the image as a file (multipart), or base64 in JSON")
                    images.append(await item.read())
                labels = self._split([v for v in form.getlist("labels") if isinstance(v, str)], multiline=False)
                templates = self._split([v for v in form.getlist("templates") if isinstance(v, str)], multiline=True)
            finally:
                await form.close()
            return {"images": self._image_list(images), "labels": labels, "templates": templates}
        if kind not in ("application/json", ""):
            raise ServeError(415, "content-type", f"{kind}: send application/json (base64 images) or multipart/form-data")
        try:
            body = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
            raise ServeError(400, "body", f"malformed JSON: {type(err).__name__}: {err}") from None
        if not isinstance(body, dict):
            raise ServeError(422, "body", "must be a JSON object")
        if "image" not in body:
            raise ServeError(422, "image", "field required")
        out: dict[str, Any] = {"images": self._image_list(self._base64_images(body["image"]))}
        for key in ("labels", "templates"):
            value = [] if body.get(key) is None else body[key]
            if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
                raise ServeError(422, key, "must be a list of strings")
            out[key] = [x.strip() for x in value]
        return out

    def _labels(self, labels: list[str], templates: list[str]) -> None:
        lim = self.cfg.limits
        for key, values in (("labels", labels), ("templates", templates)):
            if len(values) > lim.max_labels:
                raise ServeError(413, key, f"{len(values)} given; the limit is {lim.max_labels} (limits.max_labels)")
            for i, v in enumerate(values):
                if not v:
                    raise ServeError(422, f"{key}[{i}]", "empty")
                if len(v) > lim.max_input_chars:
                    raise ServeError(413, f"{key}[{i}]", f"longer than {lim.max_input_chars} characters")
        if labels and len(labels) < 2:
            raise ServeError(422, "labels", "give at least two candidate labels")
        prompts = len(labels) * len(templates)  # (the model's own defaults, when not given, are its run's)
        if prompts > 4 * lim.max_labels:
            raise ServeError(
                413, "templates", f"{len(labels)} labels x {len(templates)} templates = {prompts} prompts to embed; the "
                f"limit is {4 * lim.max_labels} (4 x limits.max_labels)"
            )  # fmt: skip
        if len(set(labels)) != len(labels):
            raise ServeError(422, "labels", "candidate labels must differ")
        for i, t in enumerate(templates):
            if "{}" not in t:
                raise ServeError(422, f"templates[{i}]", f"{t!r} has no {{}} for the label to go in")

    async def _image_call(self, method: str, *args: Any) -> Any:
        handle = self._need(self.image_text_h, "image_text")
        result = await self._call(method, lambda: getattr(handle, method).remote(*args))
        if isinstance(result, dict) and "refused" in result:  # e.g. an image the replica cannot decode
            raise ServeError(*result["refused"])
        return result

    async def _embed_images(self, images: list[bytes]) -> dict[str, Any]:
        self._need(self.image_text_h, "image_text")
        vectors = await self._image_call("embed_images", self._image_list(images))
        return {"model": self.names["image_text"], "dim": len(vectors[0]), "embeddings": vectors}

    async def _embed_texts(self, text: Any) -> dict[str, Any]:
        self._need(self.image_text_h, "image_text")
        vectors = await self._image_call("embed_texts", self._texts(text))
        return {"model": self.names["image_text"], "dim": len(vectors[0]), "embeddings": vectors}

    async def _classify_images(self, images: list[bytes], labels: list[str], templates: list[str]) -> dict[str, Any]:
        self._need(self.image_text_h, "image_text")
        self._labels(labels, templates)
        result = await self._image_call("classify", self._image_list(images), labels, templates)
        return {
            "model": self.names["image_text"],
            "results": [
                {"label": label, "scores": [{"label": lb, "score": s} for lb, s in scores]} for label, scores in result
            ],
        }

    async def _models(self) -> dict[str, Any]:
        models = []
        if self.fill_mask_h is not None:
            models.append({"id": self.names["fill_mask"], "kind": "mlm", "task": "fill-mask, zero-shot", "labels": []})
        if self.generator_h is not None:
            models.append({"id": self.names["generate"], "kind": "generator", "task": "generate", "labels": []})
        if self.corrector_h is not None:
            models.append({"id": self.names["correct"], "kind": "corrector", "task": "correct", "labels": []})
        if self.image_text_h is not None:
            info = await self.image_text_h.info.remote()
            models.append({"id": self.names["image_text"], "kind": "image_text",
                           "task": "image-embed, text-embed, image-classify", "labels": info["classes"]})  # fmt: skip
        for model_id, info in sorted(self.registry.items()):
            models.append(
                {"id": model_id, "kind": info["kind"], "task": info["task"], "labels": info["labels"],
                 "default": model_id == self.default_model}
            )
        return {"models": models}

    # ---- HTTP -------------------------------------------------------------------------------
    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(self) -> str:
        return _page()

    @api.get("/healthz", summary="Liveness: the gateway answers.")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz", summary="Readiness: every model deployment answers.")
    async def readyz(self) -> JSONResponse:
        checks = {"fill_mask": self.fill_mask_h, "tasks": self.tasks_h, "generate": self.generator_h,
                  "correct": self.corrector_h, "image_text": self.image_text_h}  # fmt: skip
        state: dict[str, Any] = {}
        ok = True
        for name, handle in checks.items():
            if handle is None:
                continue
            try:
                state[name] = await asyncio.wait_for(handle.info.remote(), timeout=5)
            except Exception as err:
                ok, state[name] = False, f"not ready: {type(err).__name__}"
        # this gateway replica's calls that a dying model replica cut short: sent again, or given up (503)
        lost = {"retried": self.replica_loss["retried"], "failed": self.replica_loss["failed"]}
        return JSONResponse(
            status_code=200 if ok else 503, content={"ready": ok, "deployments": state, "replica_loss": lost}
        )

    @api.get("/v1/models", summary="What this server serves.")
    async def models(self, request: Request) -> dict[str, Any]:
        self._auth(request.headers.get("authorization"))
        return await self._models()

    @api.post("/v1/fill-mask", response_model=FillMaskResponse, summary="Fill each [MASK].")
    async def fill_mask(self, body: FillMaskRequest, request: Request) -> dict[str, Any]:
        self._auth(request.headers.get("authorization"))
        return await self._fill_mask(body.text, body.top_k)

    @api.post("/v1/classify", response_model=ClassifyResponse, summary="Classify with a fine-tuned model.")
    async def classify(self, body: ClassifyRequest, request: Request) -> dict[str, Any]:
        self._auth(request.headers.get("authorization"))
        return await self._classify(body.text, body.text_pair, body.model, request.headers.get(MODEL_ID_HEADER))

    @api.post("/v1/zero-shot", response_model=ZeroShotResponse, summary="UniMC zero-shot classification.")
    async def zero_shot(self, body: ZeroShotRequest, request: Request) -> dict[str, Any]:
        self._auth(request.headers.get("authorization"))
        return await self._zero_shot(body.text, body.labels, body.question)

    @api.post("/v1/ner", response_model=NerResponse, summary="Named entities with character offsets.")
    async def ner(self, body: NerRequest, request: Request) -> dict[str, Any]:
        self._auth(request.headers.get("authorization"))
        return await self._ner(body.text, body.model, request.headers.get(MODEL_ID_HEADER))

    @api.post(
        "/v1/correct",
        response_model=CorrectResponse,
        summary="Correct Chinese spelling: the corrected text and each change with its character offset.",
    )
    async def correct(self, body: CorrectRequest, request: Request) -> dict[str, Any]:
        self._auth(request.headers.get("authorization"))
        return await self._correct(body.text, body.model, request.headers.get(MODEL_ID_HEADER))

    @api.post(
        "/v1/generate",
        response_model=GenerateResponse,
        summary="Generate text from a prompt (or stream it as server-sent events with stream: true).",
    )
    async def generate(self, body: GenerateRequest, request: Request):
        self._auth(request.headers.get("authorization"))
        header = request.headers.get(MODEL_ID_HEADER)
        if not body.stream:
            return await self._generate(body, header)
        model_id, pieces = await self._generate_stream(body, header)

        async def events():
            import json

            text, tokens = "", 0
            try:
                async for piece in pieces:
                    text, tokens = text + piece["text"], piece["tokens"]
                    yield f"data: {json.dumps(piece, ensure_ascii=False)}\n\n"
            except Exception as err:  # after the first byte the status is sent: report in-band
                known = refused(err)
                error = known.body() if known else {"error": _last_line(err), "field": ""}
                yield f"event: error\ndata: {json.dumps(error, ensure_ascii=False)}\n\n"
                return
            done = {"model": model_id, "text": text, "tokens": tokens}
            yield f"event: done\ndata: {json.dumps(done, ensure_ascii=False)}\n\n"

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @api.post(
        "/v1/image/embed",
        response_model=EmbedResponse,
        summary="Embed images (Taiyi): base64 in JSON, or files in a multipart form.",
        openapi_extra=_image_body(with_labels=False),
    )
    async def image_embed(self, request: Request) -> dict[str, Any]:
        self._auth(request.headers.get("authorization"))
        self._need(self.image_text_h, "image_text")
        return await self._embed_images((await self._image_request(request))["images"])

    @api.post("/v1/text/embed", response_model=EmbedResponse, summary="Embed texts into Taiyi's image-text space.")
    async def text_embed(self, body: TextEmbedRequest, request: Request) -> dict[str, Any]:
        self._auth(request.headers.get("authorization"))
        return await self._embed_texts(body.text)

    @api.post(
        "/v1/image/classify",
        response_model=ImageClassifyResponse,
        summary="Zero-shot image classification (Taiyi): images plus candidate Chinese labels -> ranked labels.",
        openapi_extra=_image_body(with_labels=True),
    )
    async def image_classify(self, request: Request) -> dict[str, Any]:
        self._auth(request.headers.get("authorization"))
        self._need(self.image_text_h, "image_text")
        body = await self._image_request(request)
        return await self._classify_images(body["images"], body["labels"], body["templates"])

    # ---- gRPC (fs_ray/protos/fs_ray_serve.proto) ---------------------------------------------
    async def _grpc(self, grpc_context, reply_cls, call):
        import grpc

        metadata = dict(grpc_context.invocation_metadata())
        try:
            self._auth(metadata.get("authorization"))
            return reply_cls(**(await call(metadata.get("multiplexed_model_id"))))
        except ServeError as err:
            grpc_context.set_code(getattr(grpc.StatusCode, GRPC_CODES.get(err.status, "INVALID_ARGUMENT")))
            grpc_context.set_details(str(err))
            return reply_cls()

    async def FillMask(self, request, grpc_context):
        from fs_ray.protos import fs_ray_serve_pb2 as pb

        async def call(_mid):
            out = await self._fill_mask(list(request.texts), request.top_k or 5)
            results = [
                pb.FillMaskResult(masks=[pb.MaskGuesses(guesses=[pb.TokenScore(**g) for g in m]) for m in r["masks"]])
                for r in out["results"]
            ]
            return {"model": out["model"], "results": results}

        return await self._grpc(grpc_context, pb.FillMaskReply, call)

    async def Classify(self, request, grpc_context):
        from fs_ray.protos import fs_ray_serve_pb2 as pb

        async def call(mid):
            pairs = list(request.text_pairs) or None
            out = await self._classify(list(request.texts), pairs, request.model or None, mid)
            results = [
                pb.ClassifyResult(label=r["label"], scores=[pb.LabelScore(**s) for s in r["scores"]])
                for r in out["results"]
            ]
            return {"model": out["model"], "results": results}

        return await self._grpc(grpc_context, pb.ClassifyReply, call)

    async def ZeroShot(self, request, grpc_context):
        from fs_ray.protos import fs_ray_serve_pb2 as pb

        async def call(_mid):
            out = await self._zero_shot(request.text, list(request.labels), request.question)
            return {"model": out["model"], "label": out["label"], "scores": [pb.LabelScore(**s) for s in out["scores"]]}

        return await self._grpc(grpc_context, pb.ZeroShotReply, call)

    async def Ner(self, request, grpc_context):
        from fs_ray.protos import fs_ray_serve_pb2 as pb

        async def call(mid):
            out = await self._ner(list(request.texts), request.model or None, mid)
            results = [pb.NerResult(entities=[pb.Entity(**e) for e in r["entities"]]) for r in out["results"]]
            return {"model": out["model"], "results": results}

        return await self._grpc(grpc_context, pb.NerReply, call)

    async def Correct(self, request, grpc_context):
        from fs_ray.protos import fs_ray_serve_pb2 as pb

        async def call(mid):
            out = await self._correct(list(request.texts), request.model or None, mid)
            results = [
                pb.CorrectResult(text=r["text"], changes=[pb.Change(**c) for c in r["changes"]])
                for r in out["results"]
            ]
            return {"model": out["model"], "results": results}

        return await self._grpc(grpc_context, pb.CorrectReply, call)

    @staticmethod
    def _grpc_generate_body(request) -> GenerateRequest:
        from pydantic import ValidationError

        top_p = request.top_p or 1.0
        if request.temperature < 0 or not 0 < top_p <= 1:
            raise ServeError(422, "temperature/top_p", "temperature must be >= 0 and top_p in (0, 1]")
        try:
            return GenerateRequest(
                prompt=request.prompt, model=request.model or None, max_new_tokens=request.max_new_tokens or None,
                temperature=request.temperature, top_p=top_p, seed=request.seed, num_beams=request.num_beams or None,
            )  # fmt: skip
        except ValidationError as err:  # the same limits as the HTTP schema, named the same way
            first = err.errors()[0]
            raise ServeError(422, ".".join(str(p) for p in first["loc"]), first["msg"]) from None

    async def Generate(self, request, grpc_context):
        from fs_ray.protos import fs_ray_serve_pb2 as pb

        async def call(mid):
            out = await self._generate(self._grpc_generate_body(request), mid)
            return {"model": out["model"], "text": out["text"]}

        return await self._grpc(grpc_context, pb.GenerateReply, call)

    async def GenerateStream(self, request, grpc_context):
        """Server streaming: one GenerateChunk per piece of text as it is generated."""
        import grpc

        from fs_ray.protos import fs_ray_serve_pb2 as pb

        metadata = dict(grpc_context.invocation_metadata())
        try:
            self._auth(metadata.get("authorization"))
            model_id, pieces = await self._generate_stream(
                self._grpc_generate_body(request), metadata.get("multiplexed_model_id")
            )
            try:
                async for piece in pieces:
                    yield pb.GenerateChunk(model=model_id, text=piece["text"], tokens=piece["tokens"])
            except Exception as err:
                raise refused(err) or err from None
        except ServeError as err:
            # a streaming reply's status comes from the exception; Serve keeps a code set before it
            grpc_context.set_code(getattr(grpc.StatusCode, GRPC_CODES.get(err.status, "INVALID_ARGUMENT")))
            grpc_context.set_details(str(err))
            raise

    @staticmethod
    def _embed_reply(out: dict[str, Any]) -> dict[str, Any]:
        from fs_ray.protos import fs_ray_serve_pb2 as pb

        return {"model": out["model"], "dim": out["dim"], "embeddings": [pb.Embedding(values=v) for v in out["embeddings"]]}

    async def ImageEmbed(self, request, grpc_context):
        from fs_ray.protos import fs_ray_serve_pb2 as pb

        async def call(_mid):
            return self._embed_reply(await self._embed_images(list(request.images)))

        return await self._grpc(grpc_context, pb.EmbedReply, call)

    async def TextEmbed(self, request, grpc_context):
        from fs_ray.protos import fs_ray_serve_pb2 as pb

        async def call(_mid):
            return self._embed_reply(await self._embed_texts(list(request.texts)))

        return await self._grpc(grpc_context, pb.EmbedReply, call)

    async def ImageClassify(self, request, grpc_context):
        from fs_ray.protos import fs_ray_serve_pb2 as pb

        async def call(_mid):
            labels = [x.strip() for x in request.labels]
            templates = [x.strip() for x in request.templates]
            out = await self._classify_images(list(request.images), labels, templates)
            results = [
                pb.ClassifyResult(label=r["label"], scores=[pb.LabelScore(**s) for s in r["scores"]])
                for r in out["results"]
            ]
            return {"model": out["model"], "results": results}

        return await self._grpc(grpc_context, pb.ImageClassifyReply, call)

    async def Models(self, request, grpc_context):
        from fs_ray.protos import fs_ray_serve_pb2 as pb

        async def call(_mid):
            out = await self._models()
            return {"models": [pb.ModelInfo(id=m["id"], kind=m["kind"], task=m["task"], labels=m["labels"])
                               for m in out["models"]]}

        return await self._grpc(grpc_context, pb.ModelsReply, call)


# ---------------------------------------------------------------------------------------------
# building and running the application
# ---------------------------------------------------------------------------------------------
def _folder(path: str, field: str) -> str:
    from fs_ray.assets import resolve_path

    folder = os.path.abspath(resolve_path(path))
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(f"models.{field}: {path} is not an exported Hugging Face folder (no config.json)")
    return folder


def _check_operation(folder: str, field: str, operation: str) -> None:
    """Refuse a folder whose family (by its ``model_type``) does not offer ``operation``."""
    from fs_ray.pretrained import ModelFolder

    model_type = read_config(folder).get("model_type")
    family = ModelFolder(folder).family  # by model_type, or a released layout's own family
    if family is None:
        return  # an architecture fs_ray has no family for: the kind check alone decides
    if operation not in family.operations:
        raise ValueError(
            f"models.{field}: a {model_type} model is {family.name}, whose exports offer "
            f"{', '.join(family.operations)}, not {operation}"
        )


def model_name(folder: str) -> str:
    """A folder's model id: its name, or its run's name for a pretraining ``<run>/export``."""
    path = os.path.normpath(folder)
    name = os.path.basename(path)
    return os.path.basename(os.path.dirname(path)) if name == "export" else name


def build_app(cfg: ServeConfig):
    """The Serve application for ``cfg``. Model folders are checked here, on the driver, so a
    bad path fails before anything is deployed."""
    m = cfg.models
    threads = cfg.replicas.torch_threads
    fill_mask = tasks = generator = corrector = image_text = None
    names: dict[str, str] = {}
    registry: dict[str, dict[str, Any]] = {}
    if m.fill_mask:
        folder = _folder(m.fill_mask, "fill_mask")
        if (kind := _kind(folder)) != "mlm":
            raise ValueError(f"models.fill_mask: {m.fill_mask} is a {kind} model, not a masked LM")
        _check_operation(folder, "fill_mask", "fill_mask")
        names["fill_mask"] = model_name(folder)
        fill_mask = masked_lm_deployment(cfg).options(**_deployment_options(cfg, "MaskedLM")).bind(folder, threads)
    if m.tasks:
        registry = discover_task_models(m.tasks)
        if m.default_task_model and m.default_task_model not in registry:
            raise ValueError(f"models.default_task_model: {m.default_task_model!r} is not among {sorted(registry)}")
        tasks = task_models_deployment(cfg).options(**_deployment_options(cfg, "TaskModels")).bind(registry, threads)
    if m.generate:
        folder = _folder(m.generate, "generate")
        if generation_kind(folder) is None:
            raise ValueError(f"models.generate: {m.generate} is a {_kind(folder)} model, not a generator")
        _check_operation(folder, "generate", "generate")
        names["generate"] = model_name(folder)
        generator = GeneratorServer.options(**_deployment_options(cfg, "Generator")).bind(folder, threads)
    if m.correct:
        folder = _folder(m.correct, "correct")
        _check_operation(folder, "correct", "correct")
        from fs_ray.pretrained import ModelFolder

        if ModelFolder(folder).family is None:  # an architecture fs_ray has no family for
            raise ValueError(f"models.correct: {m.correct} is a {_kind(folder)} model, not a Bigan rewriter")
        names["correct"] = model_name(folder)
        corrector = corrector_deployment(cfg).options(**_deployment_options(cfg, "Corrector")).bind(folder, threads)
    if m.image_text:
        folder = _folder(m.image_text, "image_text")
        if (kind := _kind(folder)) != "image_text":
            raise ValueError(f"models.image_text: {m.image_text} is a {kind} model, not a Taiyi image-text pair")
        _check_operation(folder, "image_text", "image_classify")
        names["image_text"] = model_name(folder)
        image_text = ImageTextServer.options(**_deployment_options(cfg, "ImageText")).bind(
            folder, threads, int(cfg.limits.max_image_mb * 2**20), cfg.limits.max_image_pixels
        )
    gateway = Gateway.options(
        ray_actor_options={"num_cpus": cfg.replicas.gateway_cpus},
        max_ongoing_requests=max(256, cfg.batching.max_ongoing_requests * 4),
    )
    return gateway.bind(
        cfg.model_dump(mode="json"), fill_mask, tasks, generator, registry, names, corrector, image_text
    )


def start_serve(cfg: ServeConfig) -> None:
    """Start Serve's HTTP (and gRPC) proxies on the current Ray cluster."""
    from ray.serve.config import HTTPOptions, gRPCOptions

    timeout = cfg.limits.request_timeout_s  # no client waits forever on a lost replica or a stuck model
    grpc = (
        gRPCOptions(port=cfg.grpc_port, grpc_servicer_functions=[GRPC_SERVICER], request_timeout_s=timeout)
        if cfg.grpc_port
        else gRPCOptions(grpc_servicer_functions=[])
    )
    http = HTTPOptions(host=cfg.host, port=cfg.http_port, request_timeout_s=timeout)
    serve.start(http_options=http, grpc_options=grpc)


def deploy(cfg: ServeConfig, blocking: bool = False, app=None):
    """Deploy ``cfg`` as the Serve application ``cfg.name`` (``app``: already built from it);
    returns its handle."""
    app = app if app is not None else build_app(cfg)
    start_serve(cfg)
    return serve.run(app, name=cfg.name, route_prefix=cfg.route_prefix, blocking=blocking)


def app_builder(args: dict[str, Any]):
    """Entry point for ``serve run`` / ``serve deploy`` (``import_path: fs_ray.serving.app:app_builder``).

    ``args``: ``config`` (an fs_ray serve YAML), ``set`` (a list of dotted overrides) and/or any
    ServeConfig fields inline."""
    import yaml

    from fs_ray.config import ConfigError, apply_overrides, validate

    args = dict(args or {})
    path = args.pop("config", None)
    overrides = [str(o) for o in args.pop("set", None) or []]
    data: dict[str, Any] = {}
    if path:
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"serve app args: cannot read config {path}: {err}") from None
    _merge(data, args)
    apply_overrides(data, overrides)
    return build_app(validate(ServeConfig, data, f"serve app args ({path or 'inline'})"))


def _merge(into: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value
