"""Fill [MASK] in Chinese sentences with an exported MLM folder (a quick look at a trained model).

python jobs/fill_mask.py runs/quickstart/erlangshen-tiny/export "今天天气很[MASK]。" "北京是中国的[MASK]都。"
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", help="Exported Hugging Face folder (jobs/export.py or the pretraining job).")
    parser.add_argument("text", nargs="+", help="Sentences with one [MASK] each.")
    parser.add_argument("--top-k", type=int, default=5)
    args = parser.parse_args(argv)
    from transformers import pipeline

    fill = pipeline("fill-mask", model=args.model, tokenizer=args.model, device="cpu")
    for text in args.text:
        if fill.tokenizer.mask_token not in text:
            print(f"error: {text!r} has no {fill.tokenizer.mask_token}", file=sys.stderr)
            return 2
        guesses = fill(text, top_k=args.top_k)
        print(f"{text}  ->  " + "  ".join(f"{g['token_str']} ({g['score']:.3f})" for g in guesses))
    return 0


if __name__ == "__main__":
    sys.exit(main())
