"""Prepare a pretraining corpus: raw Chinese text -> tokenized, packed parquet shards + manifest.

Run on the local cluster (cluster/local.sh up) or any Ray cluster:

    ray job submit --working-dir . -- python jobs/prepare.py --config jobs/configs/prepare_demo.yaml
    python jobs/prepare.py --config jobs/configs/prepare_demo.yaml --set input.paths=[corpus/*.jsonl.gz]

Malformed records (bad JSON, invalid UTF-8, missing text field, binary junk) are counted by reason
and skipped; past max_bad_fraction the job stops (exit 3) naming the first bad files and lines.
A bad config or missing input exits 2 before any Ray work starts.
"""

from __future__ import annotations

import sys

from fs_ray.cli import run_cli
from fs_ray.run_configs import PrepareConfig

EXIT_BAD_INPUT = 3


def main(cfg: PrepareConfig) -> int:
    from fs_ray.data.corpus import PrepareError, TooManyBadRecords, prepare, summary

    try:
        manifest = prepare(cfg)
    except PrepareError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TooManyBadRecords as err:
        print(f"error: preparation stopped: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(summary(manifest))
    print(f"manifest: {cfg.output.dir}/manifest.json")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(PrepareConfig, main, __doc__))
