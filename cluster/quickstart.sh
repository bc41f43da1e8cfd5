#!/usr/bin/env bash
# One command from a fresh clone to a finished fs_ray job on the embedded local Ray cluster:
#   1. cluster/setup.sh        venv, pinned torch, fs_ray and its dependencies
#   2. cluster/local.sh up     private Ray head + job server on 127.0.0.1:8266, token auth on
#   3. ray job submit          prepare the shipped corpus, then pretrain + export a tiny Erlangshen
#   4. fill a [MASK] with the exported Hugging Face folder
#   5. ray job submit          fine-tune it on FewCLUE eprstmt (shipped): task head vs. the TF-IDF
#                              floor on few_all (160 examples), results table + submission file
#   6. ray job submit          serve both models with Ray Serve (serve/deploy.py) and query them
# The cluster stays up afterwards (dashboard: http://127.0.0.1:8266); `cluster/local.sh down`
# stops it. Outputs land in ./runs/quickstart/.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

cluster/setup.sh
cluster/local.sh up

export RAY_ADDRESS="http://127.0.0.1:${FS_RAY_DASHBOARD_PORT:-8266}" RAY_AUTH_MODE=token
out="$here/runs/quickstart"
submit() {  # submit one job, tail its logs, fail the script if it fails
  local id="$1"; shift
  echo "== submitting $id to $RAY_ADDRESS"
  local color=(); [ -t 1 ] || color=(--log-color false)  # a log file gets no colour escapes
  .venv/bin/ray job submit "${color[@]}" --submission-id "$id" --working-dir . -- "$@"
}
stamp="$(date +%Y%m%d-%H%M%S)"

# 1. corpus: the shipped CLUECorpusSmall sample -> 128-token shards with jieba word starts
submit "fs_ray-prepare-$stamp" python jobs/prepare.py --config jobs/configs/prepare_demo.yaml \
  --set "output.dir=$out/prepared" --set output.overwrite=true

# 2. pretrain Erlangshen (tiny) with whole-word MLM on 2 Ray Train workers + DeepSpeed, export
submit "fs_ray-pretrain-$stamp" python jobs/pretrain.py --config jobs/configs/pretrain_erlangshen_tiny.yaml \
  --set "data.prepared_dir=$out/prepared" --set "run.storage_path=$out" --set "run.name=erlangshen-tiny-$stamp"

# 3. the exported folder is a plain Hugging Face model: fill a [MASK]
export_dir="$out/erlangshen-tiny-$stamp/export"
.venv/bin/python jobs/fill_mask.py "$export_dir" "今天天气很[MASK]。" "我们在北京[MASK]学。" 2>/dev/null

# 4. fine-tune and evaluate on FewCLUE eprstmt (shipped with fs_ray): results table + submission
submit "fs_ray-finetune-$stamp" python jobs/finetune.py --config jobs/configs/finetune_eprstmt_tiny.yaml \
  --set "model.from_pretrained=$export_dir" --set "run.storage_path=$out" --set "run.name=eprstmt-$stamp" \
  --set "task.splits=[few_all]" --set "methods=[head,tfidf]"

# the latest run under a fixed name, which serve/configs/serve_quickstart.yaml and serve/ray_serve.yaml name
ln -sfn "erlangshen-tiny-$stamp" "$out/erlangshen-tiny"
ln -sfn "eprstmt-$stamp" "$out/eprstmt"

# 5. serve both models with Ray Serve (HTTP + gRPC) and query them
http_port="${FS_RAY_SERVE_PORT:-8000}"
submit "fs_ray-serve-$stamp" python serve/deploy.py --config serve/configs/serve_quickstart.yaml \
  --set "models.fill_mask=$export_dir" --set "models.tasks=$out/eprstmt-$stamp" \
  --set "http_port=$http_port" --set "grpc_port=${FS_RAY_SERVE_GRPC_PORT:-9000}"
serve_url="http://127.0.0.1:$http_port"
query() {  # POST a JSON body to a route and print the answer
  echo "== POST $1 $2"
  curl -sS --fail-with-body "$serve_url$1" -H 'Content-Type: application/json' -d "$2"; echo
}
query /v1/fill-mask '{"text": "今天天气很[MASK]。", "top_k": 3}'
query /v1/classify '{"text": "这家酒店的服务很好，房间也干净。"}'
query /v1/zero-shot '{"text": "这家酒店的服务很好，房间也干净。", "labels": ["正面", "负面"]}'

.venv/bin/python cluster/quickstart_summary.py "$out/erlangshen-tiny-$stamp" "$out/eprstmt-$stamp"
cat <<MSG

== done
   prepared corpus : $out/prepared (manifest.json, shards/, config.yaml)
   pretraining run : $out/erlangshen-tiny-$stamp (checkpoints, metrics.jsonl, tensorboard/, config.yaml)
   exported model  : $export_dir (loads with transformers.AutoModelForMaskedLM)
   fine-tuning     : $out/eprstmt-$stamp (results.md, submission/, eprstmt/head/split_few_all/export)
   serving         : $serve_url/ (web page), $serve_url/docs (OpenAPI), gRPC 127.0.0.1:${FS_RAY_SERVE_GRPC_PORT:-9000}
   job list        : RAY_ADDRESS=$RAY_ADDRESS RAY_AUTH_MODE=token .venv/bin/ray job list
   dashboard       : $RAY_ADDRESS
   stop the cluster: cluster/local.sh down
MSG
