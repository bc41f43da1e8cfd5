"""tests/gpu/run.sh, the script a lent GPU runs, kept from rotting: its --dry-run goes through every
section (fs_ray's MLM objective and DeepSpeed engine under ZeRO-1, -2 and -3, the serving replica's
classify) on this CPU at tiny shapes and writes every figure; without a GPU and without --dry-run
it refuses plainly."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from .conftest import REPO

RUN = REPO / "tests" / "gpu" / "run.sh"


def _run(*args: str, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(["bash", str(RUN), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_the_dry_run_goes_through_every_section_and_writes_every_figure(tmp_path):
    out = tmp_path / "out"
    proc = _run("--dry-run", "--out", str(out), tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text(encoding="utf-8"))
    assert result["env"]["dry_run"] is True and result["env"]["device"] == "cpu"
    sections = {s["section"]: s for s in result["sections"]}
    assert list(sections) == ["mlm", "zero2", "zero3", "serve"]
    for name in ("mlm", "zero2", "zero3"):
        s = sections[name]
        assert s["zero_stage"] == {"mlm": 1, "zero2": 2, "zero3": 3}[name]
        assert s["precision"] == "fp32" and s["attention"] == "sdpa"
        for key in ("step_s", "tokens_per_s", "model_tflops_per_s", "mfu_vs_h200_bf16"):
            assert math.isfinite(s[key]) and s[key] > 0, (name, key, s[key])
        # a step the arithmetic can check: tokens/s is the micro-batch's tokens over the step time
        assert s["tokens_per_s"] == pytest.approx(s["micro_batch"] * s["seq_len"] / s["step_s"])
        assert math.isfinite(s["loss_first"]) and math.isfinite(s["loss_last"])
    serve = sections["serve"]
    assert serve["unbatched_texts_per_s"] > 0 and serve["batched_texts_per_s"] > 0
    assert serve["same_labels"] == 1.0  # padding a text into a batch of 32 does not change its label
    assert "[gpu-check] wrote" in proc.stdout


def test_without_a_gpu_it_says_to_use_the_dry_run(tmp_path):
    proc = _run("--out", str(tmp_path / "out"), tmp_path=tmp_path)
    assert proc.returncode == 2
    assert "no GPU visible" in proc.stderr and "--dry-run" in proc.stderr
    bad = _run("--dry-run", "--sections", "mlm,bogus", "--out", str(tmp_path / "o2"), tmp_path=tmp_path)
    assert bad.returncode == 2 and "unknown ['bogus']" in bad.stderr
