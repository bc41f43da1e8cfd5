r"""Deploy exported models as the fs_ray Serve application on a running Ray cluster.

    ray job submit --working-dir . -- python serve/deploy.py --config serve/configs/serve_quickstart.yaml \
        --set models.fill_mask=$PWD/runs/quickstart/erlangshen-tiny-<stamp>/export \
        --set models.tasks=$PWD/runs/quickstart/eprstmt-<stamp>

models.fill_mask is a pretraining export (masked LM: /v1/fill-mask, /v1/zero-shot); models.tasks
is a fine-tuning export, a folder of them, or a whole fine-tuning run directory (every
<task>/<method>/split_<k>/export becomes a model id such as eprstmt-head-split_few_all, served
from one multiplexed deployment: /v1/classify, /v1/ner, /v1/generate and /v1/correct for
fine-tuned generators and correctors); models.generate is a GPT2/T5/BART/Pegasus/Zhouwenwang export
(/v1/generate); models.correct is a Bigan export (/v1/correct by rewriting); models.image_text is a
Taiyi export (/v1/image/embed, /v1/text/embed, /v1/image/classify: images as base64 JSON or
multipart uploads). The application outlives this job: it keeps serving until `serve shutdown` or
`cluster/local.sh down`. Model folders must be readable from every node (shared storage on a
multi-node cluster).

HTTP on http://<host>:<http_port>/ (web page), /docs (OpenAPI), /healthz, /readyz, /v1/...;
gRPC on <host>:<grpc_port> (fs_ray/protos/fs_ray_serve.proto). With a token in the env var named
by auth_token_env on the cluster (or in auth_token_file), every /v1 route needs
`Authorization: Bearer <token>`.
Exit status 2: bad config or model folder (nothing was deployed).
"""

from __future__ import annotations

import sys

from fs_ray.cli import EXIT_BAD_CONFIG, run_cli
from fs_ray.run_configs import ServeConfig


def main(cfg: ServeConfig) -> int:
    from fs_ray.serving.app import build_app

    try:
        app = build_app(cfg)  # checks every model folder before anything is deployed
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    import ray

    from fs_ray.serving.app import deploy

    if not ray.is_initialized():
        ray.init()
    deploy(cfg, app=app)
    base = f"http://{cfg.host}:{cfg.http_port}{cfg.route_prefix.rstrip('/')}"
    print(f"[serve] application {cfg.name!r} is running")
    print(f"[serve]   page    {base}/")
    print(f"[serve]   OpenAPI {base}/docs")
    print(f"[serve]   ready   {base}/readyz")
    if cfg.grpc_port:
        print(f"[serve]   gRPC    {cfg.host}:{cfg.grpc_port} (fs_ray.serve.v1.FsRay, metadata application={cfg.name})")
    if cfg.models.fill_mask:
        print(f"[serve] try: curl -s {base}/v1/fill-mask -H 'Content-Type: application/json' "
              "-d '{\"text\": \"今天天气很[MASK]。\"}'")
    if cfg.models.image_text:
        print(f"[serve] try: curl -s {base}/v1/image/classify -F image=@<a .png or .jpg> -F labels=猫,狗,花")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(ServeConfig, main, __doc__))
