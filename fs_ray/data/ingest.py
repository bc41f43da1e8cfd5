"""Streaming a prepared corpus into Ray Train workers: seeded shuffling, equal batches per worker,
and exact mid-epoch resume.

Why not Ray Train's default ``streaming_split``: it hands blocks to whichever worker asks first,
so which rows a worker has seen depends on timing and a resumed run cannot know what was
consumed. Here the order is a pure function of (seed, epoch, world size):

1. the corpus is cut into *units* (parquet row groups of ``ROW_GROUP_ROWS`` rows);
2. each epoch permutes the units with ``seed + epoch`` and deals each to the rank holding the
   fewest rows (ranks end within one unit of each other);
3. a rank reads its units in windows of ``window_units``, permuting the rows of each window;
4. every rank gets the same number of rows per epoch, a multiple of the batch size (the few
   rows past that are left to other epochs' permutations).

A rank that has consumed ``b`` batches resumes by skipping exactly ``b * batch_size`` rows of
its own stream, so a restart neither repeats nor skips a row. :class:`CorpusDataConfig` plugs
this into ``TorchTrainer(dataset_config=...)``; workers still call
``ray.train.get_dataset_shard("train").iter_torch_batches(...)``.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from ray.train import DataConfig

from fs_ray import storage
from fs_ray.data.manifest import CorpusError, read_manifest


@dataclass(frozen=True)
class Unit:
    shard: str  # absolute path or URI of the parquet file
    row_group: int
    rows: int
    first_id: int  # global sample id of the unit's first row


@dataclass(frozen=True)
class Position:
    """Where a rank is in the stream: ``batches`` consumed since epoch 0 started."""

    batches: int = 0

    def split(self, batches_per_epoch: int) -> tuple[int, int]:
        return divmod(self.batches, batches_per_epoch)


class PreparedCorpus:
    """A folder written by ``jobs/prepare.py``: its manifest and its units."""

    def __init__(self, root: str, manifest: dict[str, Any]):
        self.root = root.rstrip("/")
        self.manifest = manifest
        units: list[Unit] = []
        next_id = 0
        for shard in manifest["shards"]:
            for g, rows in enumerate(shard["row_groups"]):
                units.append(Unit(storage.join(self.root, shard["path"]), g, rows, next_id))
                next_id += rows
        self.units = units
        self.num_rows = next_id

    @classmethod
    def load(cls, root: str) -> PreparedCorpus:
        return cls(root, read_manifest(root))

    @property
    def seq_len(self) -> int:
        return int(self.manifest["seq_len"])

    @property
    def special_ids(self) -> dict[str, Any]:
        return self.manifest["tokenizer"]["special_ids"]

    # -- the deterministic plan --------------------------------------------------------------
    def rank_units(self, epoch: int, seed: int, rank: int, world_size: int) -> list[Unit]:
        return self._deal(epoch, seed, world_size)[rank]

    @functools.lru_cache(maxsize=8)  # noqa: B019 - a corpus lives as long as its run
    def _deal(self, epoch: int, seed: int, world_size: int) -> list[list[Unit]]:
        """Permute the units with (seed, epoch); give each to the rank holding the fewest rows.

        Greedy dealing keeps every rank within one unit of the others, whatever the permutation.
        """
        order = np.random.default_rng([seed, epoch]).permutation(len(self.units))
        hands: list[list[Unit]] = [[] for _ in range(world_size)]
        loads = [(0, r) for r in range(world_size)]
        for i in order:
            rows, r = heapq.heappop(loads)
            hands[r].append(self.units[i])
            heapq.heappush(loads, (rows + self.units[i].rows, r))
        return hands

    def rows_per_rank(self, batch_size: int, world_size: int) -> int:
        """Rows every rank gets in every epoch, whole batches only.

        Dealt greedily, ranks differ by at most one unit, so the smallest share is at least
        (total - (world - 1) * largest unit) / world for any permutation: the count depends on
        neither seed nor epoch, and a run that changes ``max_steps`` keeps its data positions.
        """
        largest = max(u.rows for u in self.units)
        bound = (self.num_rows - (world_size - 1) * largest) // world_size
        rows = max(0, bound) // batch_size * batch_size
        if rows == 0:
            raise CorpusError(
                f"{self.num_rows} sequences in {len(self.units)} row groups cannot give {world_size} workers "
                f"a batch of {batch_size} each; prepare more data, or use fewer workers or smaller batches"
            )
        return rows

    def windows(
        self,
        rank: int,
        world_size: int,
        batch_size: int,
        seed: int,
        epochs: int,
        start: Position,
        window_units: int,
    ) -> list[dict[str, Any]]:
        """The read tasks of one rank from ``start`` to the end of ``epochs``, in stream order."""
        per_epoch_rows = self.rows_per_rank(batch_size, world_size)
        epoch0, batch_in_epoch = start.split(per_epoch_rows // batch_size)
        out = []
        for epoch in range(epoch0, epochs):
            units = self.rank_units(epoch, seed, rank, world_size)
            skip = batch_in_epoch * batch_size if epoch == epoch0 else 0
            budget = per_epoch_rows
            for w in range(0, len(units), window_units):
                window = units[w : w + window_units]
                rows = sum(u.rows for u in window)
                take = min(rows, budget)
                budget -= take
                if skip >= take:
                    skip -= take
                else:
                    out.append(
                        {
                            "shards": [u.shard for u in window],
                            "row_groups": [u.row_group for u in window],
                            "first_ids": [u.first_id for u in window],
                            "seed": [seed, epoch, rank, w],
                            "skip": skip,
                            "take": take,
                            "epoch": epoch,
                        }
                    )
                    skip = 0
                if budget == 0:
                    break
        return out

    def rank_dataset(
        self,
        rank: int,
        world_size: int,
        batch_size: int,
        seed: int = 0,
        epochs: int = 1,
        start: Position | None = None,
        window_units: int = 8,
    ):
        """A Ray Dataset streaming exactly this rank's rows, in order, from ``start``."""
        import ray

        plan = self.windows(rank, world_size, batch_size, seed, epochs, start or Position(), window_units)
        if not plan:
            return ray.data.from_items([]).map_batches(lambda b: b)  # an empty, finished stream
        ds = ray.data.from_items(plan, override_num_blocks=len(plan))
        # Reading a window is light next to a training step, and the Train workers may hold every
        # CPU of the cluster: the reads reserve none (so they can never wait on the workers) and
        # run at most two at a time per rank.
        return ds.map_batches(
            read_window,
            batch_size=1,
            batch_format="pyarrow",
            num_cpus=0,
            compute=ray.data.TaskPoolStrategy(size=2),
        )

    def dataset(self):
        """The whole corpus as one Ray Dataset (shard order), for inspection and evaluation."""
        import ray

        fs, _ = storage.resolve(self.root)
        paths = [storage.resolve(storage.join(self.root, s["path"]))[1] for s in self.manifest["shards"]]
        return ray.data.read_parquet(paths, filesystem=fs)


def read_window(batch: pa.Table) -> pa.Table:
    """Ray Data UDF: one window descriptor -> its rows, permuted, ``skip``/``take`` applied."""
    row = batch.to_pylist()[0]
    tables = []
    for shard, group, first in zip(row["shards"], row["row_groups"], row["first_ids"], strict=True):
        fs, path = storage.resolve(shard)
        with fs.open_input_file(path) as f:
            t = pq.ParquetFile(f).read_row_group(group)
        ids = np.arange(first, first + t.num_rows, dtype=np.int64)
        tables.append(t.append_column("sample_id", pa.array(ids)))
    table = pa.concat_tables(tables)
    order = np.random.default_rng(row["seed"]).permutation(table.num_rows)
    order = order[row["skip"] : row["take"]]
    table = table.take(pa.array(order))
    return table.append_column("epoch", pa.array(np.full(table.num_rows, row["epoch"], dtype=np.int32)))


class CorpusDataConfig(DataConfig):
    """Gives every Train worker its own deterministic stream of the prepared corpus.

    ``start`` may be a callable, evaluated each time the worker group (re)starts, so a run that
    restarts after a failure reads the data position saved with its latest checkpoint.
    Datasets other than ``dataset_name`` are split the default way.
    """

    def __init__(
        self,
        corpus_dir: str,
        batch_size: int,
        seed: int = 0,
        epochs: int = 1,
        start: Position | Callable[[], Position] | None = None,
        dataset_name: str = "train",
        window_units: int = 8,
    ):
        super().__init__(datasets_to_split="all")
        self.corpus_dir = corpus_dir
        self.batch_size = batch_size
        self.seed = seed
        self.epochs = epochs
        self.start = start
        self.dataset_name = dataset_name
        self.window_units = window_units

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        others = {k: v for k, v in datasets.items() if k != self.dataset_name}
        output = super().configure(others, world_size, worker_handles, worker_node_ids, **kwargs)
        corpus = PreparedCorpus.load(self.corpus_dir)
        start = self.start() if callable(self.start) else (self.start or Position())
        for rank in range(world_size):
            ds = corpus.rank_dataset(
                rank, world_size, self.batch_size, self.seed, self.epochs, start, self.window_units
            )
            output[rank][self.dataset_name] = ds.iterator()
        return output


def collate(batch: dict[str, np.ndarray], seq_len: int, pad_id: int = 0) -> dict[str, Any]:
    """numpy batch of variable-length rows -> int64 tensors padded to ``seq_len``."""
    import torch

    rows = batch["input_ids"]
    n = len(rows)
    input_ids = np.full((n, seq_len), pad_id, dtype=np.int64)
    attention = np.zeros((n, seq_len), dtype=np.int64)
    starts = np.zeros((n, seq_len), dtype=bool) if "word_starts" in batch else None
    for i, r in enumerate(rows):
        input_ids[i, : len(r)] = r
        attention[i, : len(r)] = 1
        if starts is not None:
            starts[i, : len(r)] = batch["word_starts"][i]
    out = {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention),
        "sample_id": torch.from_numpy(np.array(batch["sample_id"], dtype=np.int64)),
    }
    if starts is not None:
        out["word_starts"] = torch.from_numpy(starts)
    return out
