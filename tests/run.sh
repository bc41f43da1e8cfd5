#!/usr/bin/env bash
# Set up fs_ray with its dev tools and run the whole test suite (lint first).
#   tests/run.sh                 everything
#   tests/run.sh -k config       extra arguments go to pytest
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
cluster/setup.sh --dev
echo "== ruff check"
.venv/bin/ruff check .
echo "== pytest"
# pytest exits 5 when it collects no test; that is a failure here as everywhere else.
exec .venv/bin/python -m pytest tests "$@"
