"""Model code of fs_ray's own, for families that ``transformers`` does not carry as released.

:mod:`fs_ray.models.zhouwenwang` (FengShen's RoFormer: unified LM + MLM),
:mod:`fs_ray.models.bigan` (FengShen's Transformer-XL-denoise) and :mod:`fs_ray.models.taiyi`
(Taiyi's CLIP pair: a BERT text tower and a CLIP ViT image tower). Each module's classes register
with transformers' Auto classes (``AutoConfig``, ``AutoModel``, ``AutoModelForMaskedLM``, ...), so
an export loads with ``from_pretrained`` and no remote code.

When: fs_ray's own loaders call :func:`register` before they load anything
(:func:`fs_ray.pretrained.load_model`, the families' builders, the plans' checks), and
``import fs_ray`` arranges it for user code too without importing torch itself (seconds): it
registers at once when transformers' model code is already loaded, and otherwise as soon as one
of transformers' auto modules or its ``modeling_utils`` has finished loading (an import hook that
stays armed until registration succeeds, since a first attempt can fall in the middle of
transformers' own imports).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import threading
import warnings

MODULES = ("zhouwenwang", "bigan", "taiyi")  # fs_ray.models.<name>, each with a register()
# transformers modules after whose loading registration is tried
WATCHED = (
    "transformers.models.auto.configuration_auto",
    "transformers.models.auto.modeling_auto",
    "transformers.modeling_utils",
)
_registered = False
_lock = threading.RLock()


def register() -> None:
    """Register every fs_ray model with transformers' Auto classes (idempotent). A model module
    that is itself being imported is skipped: it registers itself when its body is done."""
    global _registered
    with _lock:
        if _registered:
            return
        complete = True
        for name in MODULES:
            module = sys.modules.get(f"fs_ray.models.{name}")
            if module is not None and not hasattr(module, "register"):
                complete = False
                continue
            importlib.import_module(f"fs_ray.models.{name}").register()
        _registered = complete
        if complete:
            _disarm()


def _loading(name: str) -> bool:
    """Whether module ``name`` is imported but its body has not finished running yet."""
    module = sys.modules.get(name)
    return module is not None and bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _transformers_ready(just_run: str = "") -> bool:
    """False while any watched transformers module (other than ``just_run``, whose body has just
    finished) is half-imported: registering then would fail."""
    return not any(_loading(m) for m in WATCHED if m != just_run)


def _try_register(last_chance: bool, just_run: str = "") -> None:
    if _registered or not _transformers_ready(just_run):
        return
    try:
        register()
    except Exception as err:  # never break the user's own `import transformers`
        if last_chance:
            warnings.warn(f"fs_ray could not register its models with transformers: {err!r}", stacklevel=2)


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    """Finds a watched transformers module with the normal finders and tries registration once
    it has run; stays in ``sys.meta_path`` until registration succeeds."""

    def __init__(self) -> None:
        self._busy = threading.local()

    def find_spec(self, name, path, target=None):
        if name not in WATCHED or getattr(self._busy, "on", False):
            return None
        self._busy.on = True
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self._busy.on = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            complete = all(m in sys.modules and (m == name or not _loading(m)) for m in WATCHED)
            _try_register(last_chance=complete, just_run=name)

        spec.loader.exec_module = exec_module
        return spec


def _disarm() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _RegisterAfterImport)]


def install() -> None:
    """Register now if transformers' model code is loaded, else arm the import hook."""
    if any(m in sys.modules for m in WATCHED) and _transformers_ready():
        _try_register(last_chance=True)
    if not _registered and not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())
