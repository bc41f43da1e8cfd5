"""fs_ray: Fengshenbang Chinese language models pretrained, fine-tuned, tuned and served on Ray."""

__version__ = "0.1.0"
