"""Model code of fs_ray's own, for families that ``transformers`` does not carry as released.

:mod:`fs_ray.models.zhouwenwang` (FengShen's RoFormer: unified LM + MLM) and
:mod:`fs_ray.models.bigan` (FengShen's Transformer-XL-denoise). Each module's classes
register with transformers' Auto classes (``AutoConfig``, ``AutoModel``, ``AutoModelForMaskedLM``,
...) in any process that imported fs_ray, so an export loads with ``from_pretrained`` and no remote
code. Importing torch and transformers' modeling code takes seconds, so ``import fs_ray`` does not
do it: :func:`install` registers at once when transformers' auto modules are already imported,
and otherwise right after the first of them is (a one-shot import hook: ``AutoConfig`` and
``AutoModel*`` both know ``model_type: zhouwenwang`` from then on).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings

# transformers' modules that hold the Auto mappings; the first to load triggers registration
MODULES = ("zhouwenwang", "bigan")  # fs_ray.models.<name>, each with a register()
AUTO_MODULES = ("transformers.models.auto.configuration_auto", "transformers.models.auto.modeling_auto")
_registered = False


def register() -> None:
    """Register every fs_ray model with transformers' Auto classes (idempotent)."""
    global _registered
    if _registered:
        return
    for name in MODULES:
        module = sys.modules.get(f"fs_ray.models.{name}")
        if module is not None and not hasattr(module, "register"):
            return  # its own import is what loaded transformers: each registers when its body is done
    import importlib

    for name in MODULES:
        importlib.import_module(f"fs_ray.models.{name}").register()
    _registered = True


def _register_quietly() -> None:
    try:
        register()
    except Exception as e:  # never break the user's own `import transformers`
        warnings.warn(f"fs_ray could not register its models with transformers: {e!r}", stacklevel=2)


class _AfterAutoImport(importlib.abc.MetaPathFinder):
    """Finds transformers' first auto module with the normal finders, then registers fs_ray's
    models as soon as it has run (registering imports the other one)."""

    def find_spec(self, name, path, target=None):
        if name not in AUTO_MODULES:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _register_quietly()

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    """Register now if transformers' auto modules are loaded, else when the first one loads."""
    if any(m in sys.modules for m in AUTO_MODULES):
        _register_quietly()
    elif not any(isinstance(f, _AfterAutoImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterAutoImport())
