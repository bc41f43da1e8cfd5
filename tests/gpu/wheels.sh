#!/usr/bin/env bash
# Fetch, on a machine with the package registry, the wheels tests/gpu/check.py needs and a GPU
# machine's image lacks (it has torch, transformers, tokenizers, numpy, pyyaml; not DeepSpeed or
# pydantic), into .whl/ (git-ignored), for Python 3.12 on x86-64 Linux. tests/gpu/run.sh installs
# them from there when it finds them. Versions: the ones this checkout's .venv runs.
#   bash tests/gpu/wheels.sh            # then carry .whl along with the repository
set -euo pipefail
cd "$(dirname "$0")/../.."
py=.venv/bin/python
[[ -x $py ]] || { echo "error: no .venv here: run cluster/setup.sh first (its versions are the ones fetched)" >&2; exit 2; }
version() { "$py" -c "import importlib.metadata as m; print(m.version('$1'))"; }
mkdir -p .whl/src
rm -f .whl/*.whl
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  "pydantic==$(version pydantic)" "pydantic_core==$(version pydantic_core)" \
  "typing-inspection==$(version typing-inspection)" "annotated-types==$(version annotated-types)" \
  "typing_extensions==$(version typing_extensions)" "hjson==$(version hjson)"
# DeepSpeed is published as source only: build its pure-Python wheel (ops compile on first use)
"$py" -m pip download -q --no-deps --no-binary=:all: -d .whl/src "deepspeed==$(version deepspeed)"
DS_BUILD_OPS=0 "$py" -m pip wheel -q --no-deps --no-build-isolation -w .whl .whl/src/deepspeed-*.tar.gz
rm -rf .whl/src
ls -l .whl
