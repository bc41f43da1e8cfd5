"""Starting from a released checkpoint: where its folder is, what it is, and whether a run fits it.

``model.from_pretrained`` names a local folder, an object-store URI (copied once per node into
``$FS_RAY_CACHE/pretrained/``) or a Hugging Face hub id (``IDEA-CCNL/Erlangshen-Roberta-110M``,
fetched with ``huggingface_hub`` where the hub is reachable). Everything a run needs is then read
from the folder's own files, never guessed from names:

- the architecture: ``architectures`` in ``config.json``, else the family that owns its
  ``model_type`` (some released folders have no ``architectures``);
- special and generation ids: ``generation_config.json``, then ``config.json``;
- the tokenizer: the folder's own files, compared with a corpus's by vocabulary contents
  (:func:`fs_ray.data.tokenization.vocab_fingerprint`), not by name;
- a released head (``id2label``): kept only when the task's labels fit it.

The ``check_*`` functions return None or a message naming both sides and the fix; the pretrain
and fine-tune plans raise them before a worker starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from fs_ray import storage
from fs_ray.assets import resolve_path

# tokenizer files a released folder may carry; an export keeps every one it came with
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "added_tokens.json",
    "special_tokens_map.json",
    "tokenizer_config.json",
)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# what a model of each kind is, by the architecture class name's ending
KIND_OF_ARCHITECTURE = (
    ("ForSequenceClassification", "classifier"),
    ("ForTokenClassification", "tagger"),
    ("ForMultipleChoice", "choice"),
    ("ForMaskedLM", "mlm"),
    ("ForPreTraining", "mlm"),
    ("ForCausalLM", "clm"),
    ("LMHeadModel", "clm"),
    ("ForConditionalGeneration", "seq2seq"),
)
KIND_OF_AUTO_CLASS = {
    "AutoModelForMaskedLM": "mlm",
    "AutoModelForCausalLM": "clm",
    "AutoModelForSeq2SeqLM": "seq2seq",
    "AutoModelForSequenceClassification": "classifier",
    "AutoModelForTokenClassification": "tagger",
    "AutoModelForMultipleChoice": "choice",
}
DEFAULT_LABEL = re.compile(r"^LABEL_\d+$")


class PretrainedError(ValueError):
    """A model folder that cannot be found or does not fit the run; the message names the fix."""


# ---------------------------------------------------------------------------------------------
# where the folder is
# ---------------------------------------------------------------------------------------------
def cache_root() -> str:
    return os.path.join(os.environ.get("FS_RAY_CACHE", os.path.expanduser("~/.cache/fs_ray")), "pretrained")


def resolve(source: str) -> str:
    """A local folder holding ``source``: itself, a node-local copy of a URI, or a hub snapshot."""
    local = resolve_path(source)
    if os.path.isdir(local):
        return local
    if storage.is_uri(source):
        fs, path = storage.resolve(source)
        return fetch_folder(fs, path, key=source)
    if HUB_ID.match(source) and not os.path.exists(local):
        return _from_hub(source)
    raise PretrainedError(
        f"{source} is not a folder, an object-store URI (s3://, gs://, ...) or a Hugging Face hub id (owner/name)"
    )


def fetch_folder(fs, path: str, key: str) -> str:
    """Copy the folder ``path`` of pyarrow filesystem ``fs`` into the node's cache once; return the copy.
    Concurrent workers on a node race harmlessly: each copies to its own temp dir, the first rename wins."""
    import pyarrow.fs as pafs

    if fs.get_file_info(path).type != pafs.FileType.Directory:
        raise PretrainedError(f"{key} is not a folder")
    dest = os.path.join(cache_root(), hashlib.sha1(key.encode()).hexdigest()[:16])
    if os.path.isfile(os.path.join(dest, "config.json")):
        return dest
    tmp = f"{dest}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    pafs.copy_files(path, tmp, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    try:
        os.rename(tmp, dest)
    except OSError:  # another process on this node finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _from_hub(repo_id: str) -> str:
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id)
    except Exception as err:  # offline, unknown repo, gated: all end the same way for the user
        raise PretrainedError(
            f"{repo_id} is not a local folder and the Hugging Face hub did not give it "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200]}). Where the hub is reachable: "
            f"`huggingface-cli download {repo_id} --local-dir models/{repo_id.split('/')[-1]}`, "
            "then pass that folder (or copy it to shared storage and pass its URI)"
        ) from None


# ---------------------------------------------------------------------------------------------
# what the folder is
# ---------------------------------------------------------------------------------------------
@dataclass
class ModelFolder:
    """A Hugging Face model folder, read from its own files."""

    path: str

    @classmethod
    def open(cls, source: str) -> ModelFolder:
        folder = cls(resolve(source))
        if not os.path.isfile(os.path.join(folder.path, "config.json")):
            raise PretrainedError(f"{source} has no config.json: not a Hugging Face model folder")
        return folder

    @cached_property
    def config(self) -> dict[str, Any]:
        with open(os.path.join(self.path, "config.json"), encoding="utf-8") as f:
            return json.load(f)

    def _json(self, name: str) -> dict[str, Any]:
        path = os.path.join(self.path, name)
        if not os.path.isfile(path):
            return {}
        with open(path, encoding="utf-8") as f:
            return json.load(f)

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type") or "")

    @property
    def architectures(self) -> list[str]:
        return list(self.config.get("architectures") or [])

    @cached_property
    def released_family(self):
        """The family whose released layout this folder holds where its ``model_type`` alone
        would mislead transformers (a Zhouwenwang saved as ``megatron-bert``), else None."""
        from fs_ray.families import FAMILIES

        return next((f for f in FAMILIES.values() if f.released_layout and f.released_layout(self.path)), None)

    @property
    def family(self):
        from fs_ray.families import family_for_model_type

        return self.released_family or family_for_model_type(self.model_type)

    @property
    def kind(self) -> str:
        """mlm, classifier, tagger, choice, clm or seq2seq: from ``architectures``, else from the
        family owning ``model_type`` (its default objective's model)."""
        arch = "" if self.released_family else " ".join(self.architectures)
        for key, kind in KIND_OF_ARCHITECTURE:
            if key in arch:
                return kind
        family = self.family
        for name in self.architectures:
            if family is not None and name in family.architecture_kinds:
                return family.architecture_kinds[name]
        if arch:
            raise PretrainedError(f"{self.path}: unsupported architecture {arch}")
        if family is None:
            raise PretrainedError(
                f"{self.path}: config.json has no architectures and model_type {self.model_type!r} "
                "belongs to no fs_ray family"
            )
        from fs_ray.objectives import get_objective

        return KIND_OF_AUTO_CLASS[get_objective(family.default_objective).auto_class]

    @property
    def generation_ids(self) -> dict[str, int | None]:
        """pad, eos, bos, decoder_start: ``generation_config.json`` first, then ``config.json``."""
        gen, cfg = self._json("generation_config.json"), self.config
        out = {}
        for name in ("pad", "eos", "bos", "decoder_start"):
            key = f"{name}_token_id"
            value = gen.get(key, cfg.get(key))
            out[name] = value[0] if isinstance(value, list) and value else value
        return out

    @property
    def tokenizer_files(self) -> list[str]:
        return [n for n in TOKENIZER_FILES if os.path.isfile(os.path.join(self.path, n))]

    @property
    def has_tokenizer(self) -> bool:
        return any(
            n in self.tokenizer_files for n in ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model")
        )

    @property
    def vocab_size(self) -> int:
        return int(self.config.get("vocab_size") or 0)

    @property
    def head_labels(self) -> list[str] | None:
        """The released head's labels by id (None: no classification head)."""
        if self.kind not in ("classifier", "tagger"):
            return None
        id2label = self.config.get("id2label") or {}
        if id2label:
            return [str(id2label[k]) for k in sorted(id2label, key=int)]
        return [f"LABEL_{i}" for i in range(int(self.config.get("num_labels") or 2))]

    def tokenizer(self):
        from fs_ray.data.tokenization import load_tokenizer

        return load_tokenizer(self.path)


def original_tokenizer_files(source: str) -> dict[str, bytes]:
    """The tokenizer files ``source`` came as (a model/tokenizer folder's, a vocab.txt, a builtin
    vocabulary's vocab.txt), by file name: what an export keeps beside ``tokenizer.json`` so
    slow-tokenizer loaders (FengShen's own ``BertTokenizer``/``T5Tokenizer``) find them."""
    from fs_ray.assets import BUILTIN_VOCABS

    if source in BUILTIN_VOCABS:
        return {"vocab.txt": BUILTIN_VOCABS[source].read_bytes()}
    path = resolve_path(source)
    if os.path.isfile(path) and path.endswith(".txt"):
        with open(path, "rb") as f:
            return {"vocab.txt": f.read()}
    if os.path.isdir(path):
        out = {}
        for name in TOKENIZER_FILES:
            if name != "tokenizer.json" and os.path.isfile(os.path.join(path, name)):
                with open(os.path.join(path, name), "rb") as f:
                    out[name] = f.read()
        return out
    return {}


# ---------------------------------------------------------------------------------------------
# does the run fit the folder
# ---------------------------------------------------------------------------------------------
def effective_family(model_cfg, folder: ModelFolder):
    """The family a run from ``folder`` trains as: the folder's (by ``model_type``); a
    ``model.family`` set in the config must agree with it."""
    from fs_ray.families import FAMILIES, get_family

    found = folder.family
    if found is None:
        owners = ", ".join(f"{f.name}: {'/'.join(f.model_types)}" for f in FAMILIES.values())
        raise PretrainedError(
            f"model.from_pretrained: {folder.path} is a {folder.model_type or '(no model_type)'} model, "
            f"which no fs_ray family trains ({owners})"
        )
    if "family" in model_cfg.model_fields_set and model_cfg.family != found.name:
        if folder.model_type in get_family(model_cfg.family).model_types:
            return get_family(model_cfg.family)  # families sharing an architecture (wenzhong/yuyuan)
        raise PretrainedError(
            f"model.family={model_cfg.family} but model.from_pretrained {folder.path} is a "
            f"{folder.model_type} model ({found.name}); drop model.family or set it to {found.name}"
        )
    return found


def load_model(path: str, auto_class: str, **kwargs: Any):
    """``auto_class.from_pretrained(path)``, or the owning family's loader for a released layout
    transformers would misread (:attr:`ModelFolder.released_family`)."""
    import transformers

    from fs_ray.models import register

    register()  # fs_ray's own architectures (Zhouwenwang, Bigan) join the Auto classes first
    family = ModelFolder(path).released_family
    if family is not None:
        kwargs.pop("ignore_mismatched_sizes", None)
        return family.load_released(path, auto_class, **kwargs)
    return getattr(transformers, auto_class).from_pretrained(path, local_files_only=True, **kwargs)


def check_auto_class(folder: ModelFolder, auto_class: str, what: str) -> str | None:
    """Why ``auto_class`` cannot load this folder's architecture (None: it can)."""
    import transformers

    from fs_ray.models import register

    register()

    family = folder.released_family
    if family is not None:
        if auto_class in family.released_auto_classes:
            return None
        return (
            f"{what} needs a {auto_class.removeprefix('AutoModelFor')} model, which {folder.path} "
            f"(a released {family.name} layout) cannot give"
        )

    config = transformers.AutoConfig.from_pretrained(folder.path, local_files_only=True)
    if type(config) not in getattr(transformers, auto_class)._model_mapping:
        return (
            f"{what} needs a {auto_class.removeprefix('AutoModelFor')} model, and {folder.path} "
            f"({folder.model_type}, {' '.join(folder.architectures) or 'no architectures'}) has none in transformers"
        )
    return None


def check_corpus_tokenizer(corpus_tokenizer_json: str, corpus_source: str, folder: ModelFolder) -> str | None:
    """Why a corpus encoded with ``corpus_tokenizer_json`` cannot train the model in ``folder``."""

    from fs_ray.data.tokenization import tokenizer_from_json, vocab_fingerprint

    corpus_tok = tokenizer_from_json(corpus_tokenizer_json)
    corpus_vocab = corpus_tok.get_vocab_size(with_added_tokens=True)
    fix = f"prepare the corpus with tokenizer.source={folder.path}"
    if folder.has_tokenizer:
        model_tok = folder.tokenizer()
        a, b = vocab_fingerprint(corpus_tok), vocab_fingerprint(model_tok)
        if a != b:
            return (
                f"the corpus was tokenized with {corpus_source} (vocabulary of {corpus_vocab}, fingerprint {a}) "
                f"but {folder.path} was trained with its own tokenizer (vocabulary of "
                f"{model_tok.get_vocab_size(with_added_tokens=True)}, fingerprint {b}): the same ids would mean "
                f"different tokens; {fix}"
            )
    if folder.vocab_size and corpus_vocab > folder.vocab_size:
        return (
            f"the corpus's vocabulary ({corpus_source}) has {corpus_vocab} ids but the model's embeddings hold "
            f"{folder.vocab_size}; {fix}"
        )
    return None


def check_head(
    folder: ModelFolder, labels: list[str], reinit: bool, task: str
) -> tuple[str | None, str | None, list[str]]:
    """(error, note, label order) for fine-tuning ``folder``'s released head on a task with ``labels``.

    A head fits when it has as many outputs as the task has labels and, where it names its labels,
    the same names; the label order is then the head's (output i keeps meaning released label i).
    Otherwise it is an error unless ``model.reinit_head`` (then the note says the head starts fresh)."""
    released = folder.head_labels
    if released is None:
        return None, None, labels
    named = not all(DEFAULT_LABEL.match(x) for x in released)
    if len(released) == len(labels) and not named:
        return None, None, labels
    if len(released) == len(labels) and set(released) == set(labels):
        note = (
            None
            if released == labels
            else f"{task}: labels ordered as the released head's ({', '.join(released)})"
        )
        return None, note, released
    if reinit:
        return (
            None,
            (
                f"{task}: the released head ({len(released)} labels: {', '.join(released[:6])}) is re-initialised "
                f"for the task's {len(labels)} labels (model.reinit_head)"
            ),
            labels,
        )
    return (
        f"task {task} has {len(labels)} labels ({', '.join(labels[:6])}{', ...' if len(labels) > 6 else ''}) "
        f"but {folder.path} is a released classifier with {len(released)} ({', '.join(released[:6])}); set "
        "model.reinit_head=true to train a new head on its encoder",
        None,
        labels,
    )
