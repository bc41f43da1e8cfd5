"""Training on Ray Train + DeepSpeed: the one worker loop (``loop``), the engine (``engine``),
the checkpoint layout (``checkpoint``), pretraining, fine-tuning, export and the TF-IDF floor."""
