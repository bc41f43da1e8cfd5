#!/usr/bin/env bash
# Set up fs_ray in ./.venv: Python venv, the pinned torch, then fs_ray and its dependencies.
#   cluster/setup.sh          runtime only
#   cluster/setup.sh --dev    + pytest and ruff
# torch is installed first and pinned (FS_RAY_TORCH, default torch==2.13.0) so that no other
# package's range pulls a different build. On a CUDA machine the same pin resolves to the CUDA
# wheel from PyPI; to force the CPU wheel elsewhere set
#   FS_RAY_TORCH_INDEX=https://download.pytorch.org/whl/cpu
# Re-running is cheap: nothing is reinstalled while pyproject.toml is unchanged.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
extras=""
[ "${1:-}" = "--dev" ] && extras="[dev]"
python="${FS_RAY_BASE_PYTHON:-python3}"
torch_spec="${FS_RAY_TORCH:-torch==2.13.0}"
venv="$here/.venv"

if [ ! -x "$venv/bin/python" ]; then
  echo "== creating $venv with $($python --version 2>&1)"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)

cjk_font() { command -v fc-list >/dev/null && [ -n "$(fc-list :lang=zh 2>/dev/null)" ]; }
if [ -n "$extras" ] && { [ ! -x /usr/bin/chromium ] || ! cjk_font; }; then
  # the web page tests run headless Debian chromium (a browser download is not possible here),
  # with a Chinese font so the page's Chinese renders as glyphs, not boxes
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  if command -v apt-get >/dev/null; then
    echo "== installing Debian chromium and a CJK font (WenQuanYi Micro Hei) for the web page tests"
    pkgs=(chromium fonts-wqy-microhei)
    $sudo apt-get install -y -q "${pkgs[@]}" >/dev/null || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q "${pkgs[@]}" >/dev/null; }
  else
    echo "== warning: no apt-get; install chromium at /usr/bin/chromium and a CJK font for tests/test_serve*.py" >&2
  fi
fi

stamp="$venv/.fs_ray-setup"
want="$(cat pyproject.toml | sha256sum | cut -c1-16) $torch_spec $extras"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "== fs_ray environment up to date ($venv)"
  exit 0
fi

echo "== installing $torch_spec"
if [ -n "${FS_RAY_TORCH_INDEX:-}" ]; then
  "${pip[@]}" "$torch_spec" --index-url "$FS_RAY_TORCH_INDEX"
else
  "${pip[@]}" "$torch_spec"
fi
echo "== installing fs_ray$extras (ray, deepspeed, transformers, ...)"
"${pip[@]}" -e ".$extras"
"$venv/bin/python" -c "import fs_ray, ray, torch, deepspeed, transformers; print(f'== ready: fs_ray {fs_ray.__version__}, ray {ray.__version__}, torch {torch.__version__}, deepspeed {deepspeed.__version__}, transformers {transformers.__version__}')" 2>&1 | grep '^== ready'
echo "$want" > "$stamp"
