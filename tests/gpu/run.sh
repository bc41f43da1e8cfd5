#!/usr/bin/env bash
# The GPU check: BERT-base whole-word MLM step time and MFU, the 1.3B preset under ZeRO-2 and
# ZeRO-3, a classifier replica's batching ratio (tests/gpu/check.py says how each is measured).
#   bash tests/gpu/run.sh [--out DIR] [--sections mlm,zero,serve]    # on a GPU: about 4 minutes on one H200
#   bash tests/gpu/run.sh --dry-run [--out DIR]                      # anywhere, tiny shapes (the test suite runs it)
# Python: $PYTHON, else .venv's, else python3; when it lacks DeepSpeed or pydantic, the wheels in
# .whl/ (tests/gpu/wheels.sh fetches them) are installed for it first.
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${PYTHON:-}
if [[ -z $py ]]; then
  if [[ -x .venv/bin/python ]]; then py=.venv/bin/python; else py=python3; fi
fi
if ! "$py" -c "import deepspeed, pydantic" 2>/dev/null && compgen -G ".whl/*.whl" >/dev/null; then
  site=${TMPDIR:-/tmp}/fs_ray_gpu_site
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::FutureWarning}
exec "$py" tests/gpu/check.py "$@"
