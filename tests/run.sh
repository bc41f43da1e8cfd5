#!/usr/bin/env bash
# Set up fs_ray with its dev tools and run the test suite (lint first).
#   tests/run.sh                 everything (what CI runs)
#   tests/run.sh --fast          only the tests that start no Ray (a few minutes): run it on every edit
#   tests/run.sh -k config       extra arguments go to pytest
#   tests/run.sh tests/test_config.py::test_help_documents_every_field   paths too (then only those run)
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
# the whole tests/ folder unless the arguments name test files or folders themselves
where=(tests)
for arg in "$@"; do
  [ -e "${arg%%::*}" ] && where=() && break
done
echo "== pytest"
# pytest exits 5 when it collects no test; that is a failure here as everywhere else.
exec .venv/bin/python -m pytest --durations=15 "${where[@]}" "${marker[@]}" "$@"
