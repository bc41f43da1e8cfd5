#!/usr/bin/env bash
# Start / inspect / stop fs_ray's private local Ray cluster (the embedded default).
#   cluster/local.sh up [--num-cpus N]   head node + job server on 127.0.0.1:8266, token auth on
#   cluster/local.sh status
#   cluster/local.sh down                stops only this cluster's processes (never `ray stop`)
# Files: /tmp/fs_ray/local (override with FS_RAY_CLUSTER_DIR). Needs cluster/setup.sh first.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${FS_RAY_PYTHON:-$here/.venv/bin/python}"
if [ ! -x "$py" ]; then
  echo "error: $py not found; run cluster/setup.sh first" >&2
  exit 1
fi
exec "$py" -m fs_ray.local_cluster "$@"
