#!/usr/bin/env bash
# Set up fs_ray with its dev tools and run the test suite (lint first).
#   tests/run.sh                 everything (what CI runs)
#   tests/run.sh --fast          only the tests that start no Ray (a few minutes): run it on every edit
#   tests/run.sh -k config       extra arguments go to pytest
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
cluster/setup.sh --dev
echo "== ruff check"
.venv/bin/ruff check .
marker=()
if [ "${1:-}" = "--fast" ]; then
  shift
  export FS_RAY_FAST_TIER=1
  marker=(-m "not slow")
fi
echo "== pytest"
# pytest exits 5 when it collects no test; that is a failure here as everywhere else.
exec .venv/bin/python -m pytest tests "${marker[@]}" "$@"
