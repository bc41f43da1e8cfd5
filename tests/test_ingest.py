"""Streaming prepared shards into Ray Train workers: disjoint equal shards, seeded order, exact resume."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from fs_ray.assets import DEMO_CORPUS
from fs_ray.config import load_config
from fs_ray.data.corpus import prepare
from fs_ray.data.ingest import CorpusDataConfig, CorpusError, Position, PreparedCorpus, collate
from fs_ray.run_configs import PrepareConfig

BATCH = 16


@pytest.fixture(scope="module")
def corpus_dir(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("ingest")
    src = root / "docs.txt"
    src.write_text("\n".join(DEMO_CORPUS.read_text(encoding="utf-8").split("\n")[:400]), encoding="utf-8")
    cfg = load_config(
        PrepareConfig,
        None,
        [
            f"input.paths=[{src}]",
            f"output.dir={root / 'prepared'}",
            "pack.seq_len=32",
            "output.shard_max_mb=0.05",
        ],
    )
    prepare(cfg, log=lambda *_: None)
    return str(root / "prepared")


def ids_of(ds) -> list[int]:
    return [int(x) for b in ds.iter_batches(batch_size=None, batch_format="numpy") for x in b["sample_id"]]


def test_ranks_get_disjoint_equal_whole_batches(corpus_dir):
    corpus = PreparedCorpus.load(corpus_dir)
    assert len(corpus.manifest["shards"]) > 2 and len(corpus.units) >= 8
    for world in (1, 2, 3):
        streams = [ids_of(corpus.rank_dataset(r, world, BATCH, seed=7)) for r in range(world)]
        sizes = {len(s) for s in streams}
        assert len(sizes) == 1 and sizes.pop() % BATCH == 0
        flat = [i for s in streams for i in s]
        assert len(flat) == len(set(flat))  # disjoint, no row twice
        # shares differ by at most one row group; a batch remainder per rank is left too
        assert len(flat) >= corpus.num_rows - world * (corpus.manifest["row_group_rows"] + BATCH)
        assert len(flat) <= corpus.num_rows


def test_order_is_seeded_and_changes_per_epoch(corpus_dir):
    corpus = PreparedCorpus.load(corpus_dir)
    a = ids_of(corpus.rank_dataset(0, 2, BATCH, seed=1, epochs=2))
    b = ids_of(corpus.rank_dataset(0, 2, BATCH, seed=1, epochs=2))
    c = ids_of(corpus.rank_dataset(0, 2, BATCH, seed=2, epochs=2))
    assert a == b and a != c
    half = len(a) // 2
    assert a[:half] != a[half:]
    assert a[:half] != sorted(a[:half])  # rows are shuffled, not read in file order


@pytest.mark.parametrize("batches", [0, 1, 5, 17, 40])
def test_resume_skips_exactly_the_consumed_batches(corpus_dir, batches):
    corpus = PreparedCorpus.load(corpus_dir)
    full = ids_of(corpus.rank_dataset(1, 2, BATCH, seed=3, epochs=3))
    per_epoch = len(full) // 3
    assert batches * BATCH < len(full)
    resumed = ids_of(corpus.rank_dataset(1, 2, BATCH, seed=3, epochs=3, start=Position(batches)))
    assert resumed == full[batches * BATCH :], f"resume at batch {batches} (epoch size {per_epoch})"


def test_collate_pads_to_seq_len(corpus_dir):
    corpus = PreparedCorpus.load(corpus_dir)
    batch = next(iter(corpus.rank_dataset(0, 1, BATCH).iter_batches(batch_size=BATCH, batch_format="numpy")))
    out = collate(batch, corpus.seq_len)
    assert out["input_ids"].shape == (BATCH, 32) and str(out["input_ids"].dtype) == "torch.int64"
    assert out["word_starts"].shape == (BATCH, 32)
    lengths = out["attention_mask"].sum(1).tolist()
    assert lengths == [len(r) for r in batch["input_ids"]]
    assert (out["input_ids"][:, 0] == corpus.special_ids["cls"]).all()


def test_unfinished_corpus_is_refused(tmp_path):
    (tmp_path / "shards").mkdir()
    with pytest.raises(CorpusError, match=r"no manifest\.json"):
        PreparedCorpus.load(str(tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other/9"}))
    with pytest.raises(CorpusError, match=r"expected 'fs_ray\.prepared/1'"):
        PreparedCorpus.load(str(tmp_path))


def _worker_loop(config):
    import ray.train

    ctx = ray.train.get_context()
    shard = ray.train.get_dataset_shard("train")
    seen = []
    for batch in shard.iter_torch_batches(
        batch_size=config["batch"], collate_fn=functools.partial(collate, seq_len=config["seq_len"])
    ):
        assert batch["input_ids"].shape[0] == config["batch"]
        seen.extend(batch["sample_id"].tolist())
    with open(f"{config['out']}/rank{ctx.get_world_rank()}.json", "w") as f:
        json.dump(seen, f)


@pytest.mark.parametrize("start", [0, 4])
def test_torch_trainer_workers_read_their_own_stream(corpus_dir, tmp_path, start):
    """Two real Ray Train workers pull through get_dataset_shard: disjoint, equal, resumable,
    and fed even when they hold all the cluster's CPUs."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    corpus = PreparedCorpus.load(corpus_dir)
    trainer = TorchTrainer(
        _worker_loop,
        train_loop_config={"batch": BATCH, "seq_len": corpus.seq_len, "out": str(tmp_path)},
        # the two workers hold every CPU of the test cluster: reading must still go on
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        datasets={"train": corpus.dataset()},
        dataset_config=CorpusDataConfig(corpus_dir, batch_size=BATCH, seed=5, start=lambda: Position(start)),
        run_config=RunConfig(name=f"ingest_{start}", storage_path=str(tmp_path / "runs")),
    )
    trainer.fit()
    got = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    want = [ids_of(corpus.rank_dataset(r, 2, BATCH, seed=5))[start * BATCH :] for r in range(2)]
    assert got == want
    assert len(got[0]) == len(got[1]) and not set(got[0]) & set(got[1])
    assert np.all(np.asarray(got[0]) >= 0)
