"""The shared command line of every front end: ``--config FILE``, ``--set a.b=c``, ``--print-config``.

A front end is one function taking a validated config::

    def main(cfg: PrepareConfig) -> int: ...
    if __name__ == "__main__":
        sys.exit(run_cli(PrepareConfig, main, __doc__))

``--help`` lists every field of the config with its type, default and description, so the
config model is the documentation. A bad config exits with status 2 before ``main`` runs,
i.e. before any Ray resource is requested.
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import TypeVar

from fs_ray.config import ConfigError, Section, describe_fields, load_config, to_yaml

C = TypeVar("C", bound=Section)

EXIT_BAD_CONFIG = 2


def fields_help(model: type[Section], width: int = 100) -> str:
    lines = [f"config fields ({model.__name__}; set in YAML or with --set dotted.name=value):", ""]
    for name, type_name, default, description in describe_fields(model):
        if type_name == "section":
            lines.append(f"  [{name}]  {description}")
            continue
        head = f"  {name}: {type_name}"
        if default:
            head += f" = {default}"
        lines.append(head)
        if description:
            lines.extend(
                textwrap.wrap(
                    description,
                    width=width,
                    initial_indent="      ",
                    subsequent_indent="      ",
                    break_on_hyphens=False,  # family names such as randeng-bart stay whole
                )
            )
    return "\n".join(lines)


def build_parser(
    model: type[Section], description: str | None, prog: str | None = None
) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=fields_help(model),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", "-c", metavar="FILE", help="YAML config; fields not given take their defaults."
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override one field by dotted name (repeatable), e.g. --set pack.seq_len=256.",
    )
    parser.add_argument("--print-config", action="store_true", help="Print the resolved config and exit.")
    return parser


def parse_config(
    model: type[C], argv: Sequence[str] | None, description: str | None = None, prog: str | None = None
) -> C | None:
    """Parse argv into a validated config; print and return None for --print-config."""
    parser = build_parser(model, description, prog)
    args = parser.parse_args(argv)
    cfg = load_config(model, args.config, args.overrides)
    if args.print_config:
        print(to_yaml(cfg), end="")
        return None
    return cfg


def run_cli(
    model: type[C],
    main: Callable[[C], int | None],
    description: str | None = None,
    argv: Sequence[str] | None = None,
) -> int:
    try:
        cfg = parse_config(model, argv, description)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return _exit(EXIT_BAD_CONFIG)
    if cfg is None:
        return 0
    _plain_output_when_logged()  # only for a run: --help and --print-config need no Ray import
    problem = _driver_address()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return _exit(EXIT_BAD_CONFIG)
    return _exit(int(main(cfg) or 0))


def _driver_address() -> str | None:
    """``RAY_ADDRESS`` as the README sets it for ``ray job submit`` is the job server's URL
    (``http://127.0.0.1:8266``), which a driver started with plain ``python jobs/...`` cannot join
    (``ray.init`` needs the GCS address). For the local cluster of ``cluster/local.sh`` the GCS
    address is read from its state file; for any other URL, the message says what to set."""
    import json

    address = os.environ.get("RAY_ADDRESS", "")
    if not address.startswith(("http://", "https://")):
        return None
    from fs_ray.local_cluster import LocalCluster

    path = LocalCluster().state_path
    state = json.loads(path.read_text()) if path.is_file() else {}
    if state.get("gcs_address") and state.get("dashboard_url", "").rstrip("/") == address.rstrip("/"):
        os.environ["RAY_ADDRESS"] = state["gcs_address"]
        return None
    return (
        f"RAY_ADDRESS={address} is a job server URL (what `ray job submit` talks to); a run started "
        "with python needs the cluster's GCS address (RAY_ADDRESS=<head>:6379), or submit it: "
        "ray job submit --working-dir . -- python " + " ".join(sys.argv)
    )


def _plain_output_when_logged() -> None:
    """A job's log (``ray job submit``, CI, a file) gets no progress bars and no colour escapes;
    a terminal keeps both."""
    if sys.stdout.isatty():
        return
    os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # worker-log prefixes without ANSI colours
    try:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
    except ImportError:
        pass


def _exit(code: int) -> int:
    """A failed run ends with its exit status on a line of its own: ``ray job submit`` reports 1
    for any failed driver, so the job log is where 2 (bad config or input) shows."""
    if code:
        print(f"[fs_ray] exit status {code}", file=sys.stderr, flush=True)
    return code
