"""Pretraining on Ray Train + DeepSpeed: config checks, a killed worker resumed exactly, export."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from fs_ray.assets import DEMO_CORPUS
from fs_ray.config import load_config
from fs_ray.data.corpus import prepare
from fs_ray.data.ingest import PreparedCorpus
from fs_ray.run_configs import PrepareConfig, PretrainConfig
from fs_ray.training.engine import deepspeed_config
from fs_ray.training.pretrain import PretrainError, plan, pretrain

from .conftest import REPO
from .faults import WorkerKiller


@pytest.fixture(scope="module")
def corpora(ray_local, tmp_path_factory):
    """Tiny prepared corpora: WordPiece with jieba starts, the sentinel vocabulary, Pegasus's jieba words."""
    root = tmp_path_factory.mktemp("pretrain")
    src = root / "docs.txt"
    src.write_text("\n".join(DEMO_CORPUS.read_text(encoding="utf-8").split("\n")[:300]), encoding="utf-8")
    out = {}
    for name, vocab in (
        ("wwm", "bert-chinese"),
        ("t5", "bert-chinese-sentinels"),
        ("pegasus", "pegasus-chinese"),
    ):
        cfg = load_config(
            PrepareConfig,
            None,
            [
                f"input.paths=[{src}]",
                f"output.dir={root / name}",
                "pack.seq_len=64",
                f"tokenizer.source={vocab}",
            ],
        )
        prepare(cfg, log=lambda *_: None)
        out[name] = str(root / name)
    return out


def run_cfg(tmp_path, corpus, *more) -> PretrainConfig:
    return load_config(
        PretrainConfig,
        REPO / "jobs/configs/pretrain_erlangshen_tiny.yaml",
        [
            f"data.prepared_dir={corpus}",
            f"run.storage_path={tmp_path / 'runs'}",
            "optim.micro_batch_size=8",
            "optim.warmup_steps=2",
            "scaling.cpus_per_worker=0.5",
            *more,
        ],
    )


def test_deepspeed_json_follows_the_typed_config():
    cfg = load_config(
        PretrainConfig,
        None,
        [
            "deepspeed.zero_stage=3",
            "deepspeed.offload_optimizer=true",
            "deepspeed.offload_params=true",
            "optim.grad_accum=4",
        ],
    )
    ds = deepspeed_config(cfg.optim, cfg.deepspeed, world_size=8, on_gpu=True)
    assert ds["zero_optimization"]["stage"] == 3
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"
    assert (
        ds["train_batch_size"] == 8 * 4 * 8 and ds["bf16"]["enabled"] and ds["optimizer"]["type"] == "AdamW"
    )
    sized = deepspeed_config(cfg.optim, cfg.deepspeed, world_size=8, on_gpu=True, width=2048)["zero_optimization"]
    assert sized["reduce_bucket_size"] == 2048**2 and sized["stage3_param_persistence_threshold"] == 20480
    assert sized["stage3_max_live_parameters"] <= 10**8  # not DeepSpeed's 1e9: most of a 1.3B model
    default = load_config(PretrainConfig, None, [])
    cpu = deepspeed_config(default.optim, default.deepspeed, world_size=2, on_gpu=False)
    assert not cpu["bf16"]["enabled"] and not cpu["fp16"]["enabled"] and "optimizer" not in cpu


def test_progress_averages_losses_in_place_and_keeps_none_of_them():
    """The loss since the last line is summed into one tensor in place: a run that prints only at
    its end (fine-tuning) must not hold a tensor per step (each pinned a step's freed activations)."""
    from types import SimpleNamespace

    from fs_ray.training.loop import Progress

    work = SimpleNamespace(total_steps=10, label="t", metrics_path=None, tensorboard_dir=None)
    progress = Progress(work, rank=0, world=1, first_step=0)
    for value in (1.0, 2.0, 6.0):
        progress.add(torch.tensor(value, requires_grad=True) * 1.0, tokens=4)
    accumulator = progress.loss_sum
    progress.add(torch.tensor(3.0), tokens=4)
    assert progress.loss_sum is accumulator and not accumulator.requires_grad  # one tensor, summed in place
    assert progress.line(4, 1e-3) == pytest.approx(3.0)
    progress.add(torch.tensor(5.0), tokens=4)
    assert progress.line(5, 1e-3) == pytest.approx(5.0)  # only what came after the last line
    assert progress.line(5, 1e-3) != progress.line(5, 1e-3)  # nothing since: NaN


def test_bad_runs_fail_before_any_worker_starts(corpora, tmp_path):
    with pytest.raises(PretrainError, match="bert-chinese-sentinels"):
        plan(run_cfg(tmp_path, corpora["wwm"], "model.family=randeng"))
    with pytest.raises(PretrainError, match="precision=bf16 needs GPUs"):
        plan(run_cfg(tmp_path, corpora["wwm"], "deepspeed.precision=bf16"))
    with pytest.raises(PretrainError, match=r"data\.prepared_dir: .*no manifest\.json"):
        plan(run_cfg(tmp_path, str(tmp_path), "model.family=erlangshen"))
    with pytest.raises(PretrainError, match=r"model\.from_pretrained"):
        plan(run_cfg(tmp_path, corpora["wwm"], f"model.from_pretrained={tmp_path / 'nope'}"))


def _losses_by_step(run_dir) -> dict[int, float]:
    return {
        rec["step"]: rec["loss"]
        for rec in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
    }


def test_killed_worker_resumes_at_the_same_step_and_data_position(corpora, tmp_path):
    """2 workers, ZeRO-1; a worker process is SIGKILLed from outside once the step-4 checkpoint is
    registered; the group restarts from the latest registered checkpoint and finishes, every rank
    having trained on exactly its planned batches, in order."""
    trace = tmp_path / "trace"
    trace.mkdir()
    killed_run = ["optim.max_steps=40", "checkpoint.every_n_steps=4", "checkpoint.max_failures=2"]
    cfg = run_cfg(tmp_path, corpora["wwm"], *killed_run)
    run_dir = tmp_path / "runs" / cfg.run.name
    position = run_dir / "data_position.json"

    def registered_step_4() -> bool:
        try:
            return json.loads(position.read_text())["step"] >= 4
        except (OSError, ValueError):
            return False

    killer = WorkerKiller(registered_step_4)
    killer.start()
    try:
        summary = pretrain(cfg, trace_dir=str(trace))
    finally:
        killer.stop()
    assert killer.killed, "no worker was killed"
    assert summary["metrics"]["step"] == 40
    assert json.loads(position.read_text()) == {
        "step": 40,
        "batches": 40,
        "checkpoint": "checkpoint_step00000040",
    }
    assert sorted(p.name for p in run_dir.glob("checkpoint_step*")) == [
        "checkpoint_step00000036",
        "checkpoint_step00000040",
    ]
    assert (run_dir / "config.yaml").exists() and (run_dir / "deepspeed_config.json").exists()
    losses = [json.loads(line)["loss"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0], f"whole-word MLM loss did not go down: {losses}"
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))

    # loss-exact resume: the same run undisturbed logs the same losses at every step (data position,
    # masking seeds and every rank's RNG state, dropout included, come back with the checkpoint)
    pretrain(run_cfg(tmp_path, corpora["wwm"], *killed_run, "run.name=undisturbed"))
    undisturbed = _losses_by_step(tmp_path / "runs" / "undisturbed")
    resumed = _losses_by_step(run_dir)  # a step logged twice keeps its redone value
    assert sorted(resumed) == sorted(undisturbed) == list(range(4, 41, 4))
    for step, loss in undisturbed.items():
        assert resumed[step] == pytest.approx(loss, abs=1e-6), f"step {step}: {resumed[step]} vs {loss}"

    # every rank saw exactly its planned batches, the steps redone after the kill included
    corpus = PreparedCorpus.load(corpora["wwm"])
    for rank in range(2):
        records = [json.loads(line) for line in (trace / f"rank{rank}.jsonl").read_text().splitlines()]
        seen = {r["step"]: r["ids"] for r in records}  # a redone step overwrites the lost attempt
        plan_ids = [
            int(i)
            for b in corpus.rank_dataset(rank, 2, 8, seed=cfg.run.seed).iter_batches(
                batch_size=8, batch_format="numpy"
            )
            for i in b["sample_id"]
        ]
        assert [i for s in sorted(seen) for i in seen[s]] == plan_ids[: 40 * 8]
        # two attempts: the first ran steps 0..k, the second resumed at a checkpoint Ray had
        # registered (a multiple of 4, at least 4, at most k + 1) and ran to the end
        pids = list(dict.fromkeys(r["pid"] for r in records))
        assert len(pids) == 2, f"rank {rank} trained in {len(pids)} processes: {pids}"
        steps = [r["step"] for r in records]
        first = [r["step"] for r in records if r["pid"] == pids[0]]
        second = [r["step"] for r in records if r["pid"] == pids[1]]
        assert first == list(range(len(first))) and steps == first + second
        resumed_at = second[0]
        assert resumed_at % 4 == 0 and 4 <= resumed_at <= first[-1] + 1
        assert second == list(range(resumed_at, 40))

    # the exported folder is a plain Hugging Face model
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    export = summary["export"]
    model = AutoModelForMaskedLM.from_pretrained(export)
    tok = AutoTokenizer.from_pretrained(export)
    enc = tok("今天天气很好", return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    assert logits.shape[-1] >= 21128 and tok.mask_token == "[MASK]"
    assert os.path.exists(os.path.join(export, "model.safetensors"))


@pytest.mark.parametrize(
    ("family", "corpus", "zero"),
    [
        ("wenzhong", "wwm", 2),
        ("randeng", "t5", 3),
        ("randeng-bart", "wwm", 1),
        ("randeng-pegasus", "pegasus", 2),
        ("zhouwenwang", "wwm", 2),
        ("bigan", "wwm", 1),  # denoise: confusion-set noise rewritten, on the BERT-vocabulary corpus
    ],
)
def test_other_objectives_train_and_export(corpora, tmp_path, family, corpus, zero):
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSeq2SeqLM

    from fs_ray.data.tokenization import load_tokenizer

    cfg = run_cfg(
        tmp_path,
        corpora[corpus],
        f"model.family={family}",
        f"run.name={family}",
        f"deepspeed.zero_stage={zero}",
        "optim.max_steps=12",
        "optim.lr=2e-3",
        "checkpoint.every_n_steps=12",
        "scaling.num_workers=2",
    )
    summary = pretrain(cfg)
    assert summary["metrics"]["step"] == 12
    auto = {"wenzhong": AutoModelForCausalLM, "zhouwenwang": AutoModelForMaskedLM, "bigan": AutoModelForCausalLM}.get(
        family, AutoModelForSeq2SeqLM
    )
    model = auto.from_pretrained(summary["export"])
    records = [json.loads(line) for line in (tmp_path / "runs" / family / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records]
    assert losses[-1] < losses[0], f"{family} loss did not go down: {losses}"
    if family == "zhouwenwang":  # unified: both losses logged, both go down; the export also generates
        for part in ("mlm_loss", "lm_loss"):
            values = [r[part] for r in records if r.get(part) is not None]
            assert len(values) >= 2 and values[-1] < values[0], f"{part}: {values}"
        assert {"mlm_loss", "lm_loss"} <= set(summary["metrics"])
        causal = AutoModelForCausalLM.from_pretrained(summary["export"]).eval()
        out = causal.generate(torch.tensor([[2, 791, 1921]]), max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert out.shape == (1, 7)
    assert model.num_parameters() > 0
    info = json.loads((tmp_path / "runs" / family / "export" / "fs_ray_export.json").read_text())
    assert info["verified_max_abs_logit_diff"] < 1e-4  # the export reproduces the workers' logits
    # the export tokenizes as the corpus did (for Pegasus: jieba words, restored from the folder)
    text = "我们喜欢北京的东西。"
    manifest = json.loads((Path(corpora[corpus]) / "manifest.json").read_text(encoding="utf-8"))
    corpus_tok = load_tokenizer(manifest["tokenizer"]["source"])
    assert load_tokenizer(summary["export"]).encode(text, add_special_tokens=False).ids == corpus_tok.encode(
        text, add_special_tokens=False
    ).ids


@pytest.mark.parametrize("zero", [0, 2, 3])
def test_restarted_driver_resumes_and_export_reproduces_the_logits(corpora, tmp_path, zero):
    """A finished run started again with more steps continues from its last checkpoint (same
    name and storage); the export of the final checkpoint gives the trained model's logits."""
    from transformers import AutoModelForMaskedLM

    trace = tmp_path / "trace"
    trace.mkdir()
    common = [f"deepspeed.zero_stage={zero}", "checkpoint.every_n_steps=2", f"run.name=zero{zero}"]
    pretrain(run_cfg(tmp_path, corpora["wwm"], "optim.max_steps=4", *common), trace_dir=str(trace))
    summary = pretrain(run_cfg(tmp_path, corpora["wwm"], "optim.max_steps=6", *common), trace_dir=str(trace))
    assert summary["metrics"]["step"] == 6
    steps = [json.loads(line)["step"] for line in (trace / "rank0.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4, 5]  # the second driver did only steps 4 and 5

    export = json.loads((tmp_path / "runs" / f"zero{zero}" / "export" / "fs_ray_export.json").read_text())
    assert export["zero_stage"] == zero and export["verified_max_abs_logit_diff"] <= 1e-5
    probe = torch.load(os.path.join(summary["checkpoint"], "export_probe.pt"), weights_only=True)
    model = AutoModelForMaskedLM.from_pretrained(summary["export"]).eval()
    with torch.no_grad():
        logits = model(**probe["inputs"]).logits
    torch.testing.assert_close(logits, probe["logits"], rtol=0, atol=1e-5)
    if zero == 3:  # ZeRO-3's shards merged: the longest export
        _export_killed_mid_write_leaves_nothing_finished_and_a_rerun_completes(
            tmp_path / "runs" / "zero3", tmp_path / "killed-export", probe
        )


def _export_killed_mid_write_leaves_nothing_finished_and_a_rerun_completes(run_dir, out, probe):
    import glob
    import signal
    import subprocess
    import sys
    import time

    from transformers import AutoModelForMaskedLM

    from fs_ray.training.export import PARTIAL

    command = [sys.executable, "jobs/export.py", str(run_dir), str(out)]
    for _ in range(5):
        proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        partial = f"{out}{PARTIAL}{proc.pid}"
        while proc.poll() is None and not os.path.isdir(partial):
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)  # the moment it starts writing
        killed = proc.wait() == -signal.SIGKILL
        if killed:
            break
    assert killed, "the export finished before it could be killed, 5 times"
    assert not out.exists(), "a killed export left a folder under the export's own name"
    assert os.path.isdir(partial)  # what it wrote stays under its temporary name
    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert glob.glob(glob.escape(str(out)) + PARTIAL + "*") == []  # the killed one's leftovers cleared
    model = AutoModelForMaskedLM.from_pretrained(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**probe["inputs"]).logits, probe["logits"], rtol=0, atol=1e-5)


def _trace_steps(trace: Path, rank: int = 0) -> list[tuple[int, int, list[int]]]:
    """(pid, step, sample ids) of every step a rank trained, in order."""
    lines = (trace / f"rank{rank}.jsonl").read_text().splitlines()
    return [(r["pid"], r["step"], r["ids"]) for r in map(json.loads, lines)]


def test_truncated_latest_checkpoint_is_named_and_the_run_resumes_from_the_one_before(corpora, tmp_path):
    """One shard of the latest checkpoint is truncated before a rerun: the driver names the file,
    the workers resume from the complete checkpoint before it at its data position, export refuses
    the broken one, and a checkpoint whose upload was cut short (never registered) is removed. The
    rerun saves its step-4 checkpoint under a new name, so Ray Train's list never holds one folder
    twice: a third run resumes cleanly after Ray has deleted the broken one."""
    import subprocess
    import sys

    from fs_ray.training import checkpoint as layout

    trace = tmp_path / "trace"
    trace.mkdir()
    common = ["checkpoint.every_n_steps=2", "run.name=trunc"]
    pretrain(run_cfg(tmp_path, corpora["wwm"], "optim.max_steps=4", *common), trace_dir=str(trace))
    run_dir = tmp_path / "runs" / "trunc"
    (shard,) = (run_dir / "checkpoint_step00000004" / "deepspeed").glob("*rank_1_*optim_states.pt")
    size = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[:100])
    cut_short = run_dir / "checkpoint_step00000006"  # a copy whose rank-1 upload never finished
    subprocess.run(["cp", "-r", str(run_dir / "checkpoint_step00000002"), str(cut_short)], check=True)
    (cut_short / layout.FILES_FILE.format(rank=1)).unlink()

    export = subprocess.run(
        [sys.executable, "jobs/export.py", str(run_dir / "checkpoint_step00000004"), str(tmp_path / "bad")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (
        export.returncode == 2
        and f"deepspeed/{shard.name} (rank 1) is 100 bytes, {size:,} were written" in export.stderr
    )
    assert not (tmp_path / "bad").exists()

    lines: list[str] = []
    summary = pretrain(
        run_cfg(tmp_path, corpora["wwm"], "optim.max_steps=6", *common),
        log=lines.append,
        trace_dir=str(trace),
    )
    said = "\n".join(lines)
    assert f"checkpoint_step00000004: deepspeed/{shard.name} (rank 1) is 100 bytes" in said
    assert "the run resumes from checkpoint_step00000002" in said
    assert "removed checkpoint_step00000006: Ray Train never registered it" in said
    first = [(s, ids) for pid, s, ids in _trace_steps(trace) if pid == _trace_steps(trace)[0][0]]
    second = [(s, ids) for pid, s, ids in _trace_steps(trace) if pid != _trace_steps(trace)[0][0]]
    assert [s for s, _ in first] == [0, 1, 2, 3] and [s for s, _ in second] == [2, 3, 4, 5]
    assert second[:2] == first[2:]  # the same batches again: the data position came back with step 2
    assert summary["metrics"]["step"] == 6 and summary["checkpoint"].endswith("checkpoint_step00000006")
    assert sorted(p.name for p in run_dir.glob("checkpoint_step*")) == [
        "checkpoint_step00000004-1",  # the redone step 4, beside (then instead of) the broken one
        "checkpoint_step00000006",
    ]
    assert (
        json.loads((run_dir / "export" / "fs_ray_export.json").read_text())["verified_max_abs_logit_diff"]
        <= 1e-5
    )

    pretrain(run_cfg(tmp_path, corpora["wwm"], "optim.max_steps=8", *common), trace_dir=str(trace))
    assert [s for _, s, _ in _trace_steps(trace)][-2:] == [6, 7]


def test_a_full_disk_while_checkpointing_names_the_path_and_a_rerun_with_space_resumes(corpora, tmp_path):
    """The run folder is a small tmpfs: the step-2 checkpoint fits, step 4's does not. The run
    stops with an error naming the path and the cause, the step-2 checkpoint is intact, and the
    same command with space resumes from it."""
    import shutil
    import subprocess

    from fs_ray.training import checkpoint as layout
    from fs_ray.training.loop import CheckpointError

    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128m", "tmpfs", str(disk)], check=True)
    trace = tmp_path / "trace"
    trace.mkdir()
    try:
        common = [
            f"run.storage_path={disk}",
            "run.name=full",
            "checkpoint.every_n_steps=2",
            "checkpoint.max_failures=0",
        ]
        pretrain(run_cfg(tmp_path, corpora["wwm"], "optim.max_steps=2", *common), trace_dir=str(trace))
        run_dir = disk / "full"
        step2 = run_dir / "checkpoint_step00000002"
        checkpoint_bytes = sum(p.stat().st_size for p in step2.rglob("*") if p.is_file())
        room = shutil.disk_usage(disk).used + checkpoint_bytes // 2  # half a checkpoint left
        subprocess.run(["mount", "-o", f"remount,size={room // 4096 * 4096}", str(disk)], check=True)

        with pytest.raises(CheckpointError) as failed:
            pretrain(run_cfg(tmp_path, corpora["wwm"], "optim.max_steps=4", *common), trace_dir=str(trace))
        message = str(failed.value)
        assert "checkpoint at step 4" in message and "no space left on device" in message
        assert str(run_dir / "checkpoint_step00000004") in message and "rerun the same command" in message
        assert layout.problems(str(step2)) == []
        assert layout.newest_complete(str(run_dir))[0] == "checkpoint_step00000002"

        subprocess.run(["mount", "-o", "remount,size=256m", str(disk)], check=True)
        summary = pretrain(
            run_cfg(tmp_path, corpora["wwm"], "optim.max_steps=4", *common), trace_dir=str(trace)
        )
        assert summary["metrics"]["step"] == 4
        pids = list(dict.fromkeys(pid for pid, _, _ in _trace_steps(trace)))
        assert [s for pid, s, _ in _trace_steps(trace) if pid == pids[-1]] == [2, 3]  # resumed at step 2
        assert layout.problems(summary["checkpoint"]) == []
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_continue_pretraining_from_an_exported_folder(corpora, tmp_path):
    """model.from_pretrained starts from the folder's weights (checked with a vanishing lr)."""
    from safetensors.torch import load_file

    first = pretrain(
        run_cfg(tmp_path, corpora["wwm"], "optim.max_steps=2", "run.name=first", "scaling.num_workers=1")
    )
    cont = pretrain(
        run_cfg(
            tmp_path,
            corpora["wwm"],
            f"model.from_pretrained={first['export']}",
            "optim.max_steps=1",
            "optim.lr=1e-12",
            "optim.warmup_steps=0",
            "run.name=continued",
            "scaling.num_workers=1",
        )
    )
    before = load_file(os.path.join(first["export"], "model.safetensors"))
    after = load_file(os.path.join(cont["export"], "model.safetensors"))
    assert before.keys() == after.keys()
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=0, atol=1e-6)
