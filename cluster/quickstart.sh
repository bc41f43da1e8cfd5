#!/usr/bin/env bash
# One command from a fresh clone to a finished fs_ray job on the embedded local Ray cluster:
#   1. cluster/setup.sh        venv, pinned torch, fs_ray and its dependencies
#   2. cluster/local.sh up     private Ray head + job server on 127.0.0.1:8266, token auth on
#   3. ray job submit          the main job on the shipped demo data (see jobs/configs/)
# The cluster stays up afterwards (dashboard: http://127.0.0.1:8266); `cluster/local.sh down`
# stops it. Outputs land in ./runs/quickstart/.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

cluster/setup.sh
cluster/local.sh up

export RAY_ADDRESS="http://127.0.0.1:${FS_RAY_DASHBOARD_PORT:-8266}" RAY_AUTH_MODE=token
out="$here/runs/quickstart"
job_id="fs_ray-quickstart-$(date +%Y%m%d-%H%M%S)"
echo "== submitting $job_id to $RAY_ADDRESS (outputs: $out)"
.venv/bin/ray job submit --submission-id "$job_id" --working-dir . -- \
  python jobs/prepare.py --config jobs/configs/prepare_demo.yaml \
  --set "output.dir=$out/prepared" --set output.overwrite=true

cat <<MSG

== done: job $job_id
   prepared corpus : $out/prepared (manifest.json, shards/, config.yaml)
   job list        : RAY_ADDRESS=$RAY_ADDRESS RAY_AUTH_MODE=token .venv/bin/ray job list
   dashboard       : $RAY_ADDRESS
   stop the cluster: cluster/local.sh down
MSG
