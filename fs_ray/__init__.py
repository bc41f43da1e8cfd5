"""fs_ray: Fengshenbang Chinese language models pretrained, fine-tuned, tuned and served on Ray."""

__version__ = "0.1.0"

from fs_ray.models import install as _install_models

_install_models()  # fs_ray's own model classes join transformers' Auto classes (lazily)
