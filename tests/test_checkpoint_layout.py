"""Checkpoint completeness (fast tier, no Ray): every rank's file list, sizes, the walk back to the
newest complete checkpoint, and the names a run that fell back saves under."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from fs_ray.training import checkpoint as layout


def fake_checkpoint(run, step: int, world: int = 2, name: str | None = None):
    """A checkpoint folder as loop.save_checkpoint leaves it: rank 0's state, every rank's shard
    and file list."""
    folder = run / (name or layout.dir_name(step))
    for rank in range(world):
        staged = Path(tempfile.mkdtemp())  # each rank's local staging folder
        (staged / layout.DS_TAG).mkdir()
        (staged / layout.DS_TAG / f"zero_pp_rank_{rank}_optim_states.pt").write_bytes(os.urandom(1000 + rank))
        if rank == 0:
            (staged / layout.STATE_FILE).write_text(json.dumps({"step": step, "world_size": world}))
        layout.write_file_list(str(staged), rank, world, step)
        for path in staged.rglob("*"):  # what Ray Train's upload does: every rank's files, one folder
            if path.is_file():
                dest = folder / path.relative_to(staged)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(path.read_bytes())
        shutil.rmtree(staged)
    return folder


def test_a_complete_checkpoint_has_no_problems_and_each_kind_of_damage_is_named(tmp_path):
    folder = fake_checkpoint(tmp_path, 4)
    assert layout.problems(str(folder)) == []

    shard = folder / layout.DS_TAG / "zero_pp_rank_1_optim_states.pt"
    shard.write_bytes(shard.read_bytes()[:300])  # truncated
    assert layout.problems(str(folder)) == [
        f"{layout.DS_TAG}/{shard.name} (rank 1) is 300 bytes, 1,001 were written"
    ]
    shard.unlink()
    assert layout.problems(str(folder)) == [f"{layout.DS_TAG}/{shard.name} (rank 1) missing"]

    (folder / layout.FILES_FILE.format(rank=1)).unlink()  # rank 1's upload never finished
    assert "rank 1's file list" in layout.problems(str(folder))[0]
    (folder / layout.STATE_FILE).write_text('{"step": 4, "wor')  # rank 0's state cut short
    assert "not readable JSON" in layout.problems(str(folder))[0]
    (folder / layout.STATE_FILE).unlink()
    assert "missing" in layout.problems(str(folder))[0]


def test_a_checkpoint_saved_before_file_lists_counts_as_complete(tmp_path):
    folder = tmp_path / layout.dir_name(2)
    folder.mkdir()
    (folder / layout.STATE_FILE).write_text(json.dumps({"step": 2}))  # no world_size, no lists
    assert layout.problems(str(folder)) == []


def test_the_walk_back_skips_incomplete_checkpoints_and_says_why(tmp_path):
    for step in (2, 4, 6):
        fake_checkpoint(tmp_path, step)
    (tmp_path / layout.dir_name(6) / layout.FILES_FILE.format(rank=0)).unlink()
    shard = tmp_path / layout.dir_name(4) / layout.DS_TAG / "zero_pp_rank_0_optim_states.pt"
    shard.write_bytes(b"")
    name, skipped = layout.newest_complete(str(tmp_path))
    assert name == layout.dir_name(2)
    assert [n for n, _ in skipped] == [layout.dir_name(6), layout.dir_name(4)]
    assert "is 0 bytes, 1,000 were written" in layout.describe(skipped)
    assert layout.newest_complete(str(tmp_path), at_or_before=layout.dir_name(2)) == (layout.dir_name(2), [])
    assert layout.latest(str(tmp_path)) == str(tmp_path / layout.dir_name(2))
    for step in (2,):
        (tmp_path / layout.dir_name(step) / layout.STATE_FILE).unlink()
    assert layout.latest(str(tmp_path)) is None


def test_a_run_that_fell_back_saves_under_names_it_has_not_used(tmp_path):
    names = layout.Names([layout.dir_name(4), layout.dir_name(6), f"{layout.dir_name(6)}-1"])
    assert names(2) == layout.dir_name(2)
    assert names(4) == f"{layout.dir_name(4)}-1"
    assert names(6) == f"{layout.dir_name(6)}-2"
    # and the names still sort in the order they were saved in
    fake_checkpoint(tmp_path, 4)
    fake_checkpoint(tmp_path, 4, name=names(4))
    assert layout.newest_complete(str(tmp_path))[0] == f"{layout.dir_name(4)}-1"
    assert layout.newest_complete(str(tmp_path), at_or_before=layout.dir_name(4))[0] == layout.dir_name(4)


def test_registered_names_come_from_ray_trains_snapshot(tmp_path):
    snapshot = {
        "checkpoint_results": [{"checkpoint_dir_name": layout.dir_name(2), "metrics": {}}],
        "latest_checkpoint_result": {"checkpoint_dir_name": f"{layout.dir_name(4)}-1", "metrics": {}},
        "validated_checkpoint_dir_names": [],
    }
    assert layout.registered(str(tmp_path)) == set()
    (tmp_path / layout.SNAPSHOT_FILE).write_text(json.dumps(snapshot))
    assert layout.registered(str(tmp_path)) == {layout.dir_name(2), f"{layout.dir_name(4)}-1"}
