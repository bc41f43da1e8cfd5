"""Export an fs_ray checkpoint (any ZeRO stage) as a plain Hugging Face folder.

    python jobs/export.py runs/erlangshen-tiny/checkpoint_step00000060 runs/erlangshen-tiny/export
    python jobs/export.py runs/erlangshen-tiny            # newest complete checkpoint -> <run>/export
    python jobs/export.py --taiyi <released text folder> <openai CLIP folder> models/taiyi-102m

The folder holds config.json, model.safetensors and the tokenizer, and loads with
AutoModelForMaskedLM / AutoModelForCausalLM / AutoModelForSeq2SeqLM without fs_ray or DeepSpeed.
When the checkpoint carries the logits the workers computed at save time, the export recomputes
them and fails if they differ.

--taiyi writes a released Taiyi-CLIP text tower (e.g. Taiyi-CLIP-Roberta-102M-Chinese) and the
openai CLIP folder it was trained against (clip-vit-base-patch32) as one pair folder, laid out as
fs_ray's own Taiyi export: serve it (models.image_text), load it with AutoModel, or continue it.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "checkpoint", help="A checkpoint_step* folder, or a run folder (its newest complete checkpoint; incomplete ones are skipped and named)."
    )
    parser.add_argument("out", nargs="?", help="Output folder (default: <run folder>/export).")
    parser.add_argument(
        "--taiyi", nargs=2, metavar=("TEXT", "CLIP"),
        help="Instead of a checkpoint: a released Taiyi text tower and an openai CLIP folder, written as "
        "one pair folder at the first positional argument.",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.taiyi:
        if args.out:
            parser.error("--taiyi TEXT CLIP takes one positional argument: the output folder")
        from fs_ray.training.contrastive import export_released_pair

        try:
            out = export_released_pair(args.taiyi[0], args.taiyi[1], args.checkpoint)
        except (OSError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        print(f"exported {args.taiyi[0]} + {args.taiyi[1]} -> {out}")
        return 0
    from fs_ray.training import checkpoint as layout
    from fs_ray.training.export import export_checkpoint

    ckpt = args.checkpoint.rstrip("/")
    run = ckpt
    if not layout.is_checkpoint(ckpt):
        found = layout.latest(ckpt, log=lambda line: print(f"note: {line}", file=sys.stderr))
        if not found:
            what = "no complete checkpoint" if layout.checkpoint_names(ckpt) else "no checkpoint_step* inside"
            print(f"error: {ckpt} is neither a checkpoint nor a run folder with a checkpoint ({what})", file=sys.stderr)
            return 2
        ckpt = found
    else:
        run = os.path.dirname(ckpt)
        problems = layout.problems(ckpt)
        if problems:
            listed = "\n  ".join(problems)
            print(f"error: checkpoint {ckpt} is incomplete, not exported:\n  {listed}", file=sys.stderr)
            return 2
    out = args.out or os.path.join(run, "export")
    try:
        export_checkpoint(ckpt, out)
    except (FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"exported {ckpt} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
