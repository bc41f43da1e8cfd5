"""Local-cluster ports never collide: every port of a head and its extra nodes comes from one
reservation of non-overlapping blocks below the OS's ephemeral range, and a layout whose ports
meet is refused before ``ray start``, naming both components (a CI run once failed by chance when
a dashboard port from the ephemeral range landed in another block's worker ports)."""

from __future__ import annotations

import random

import pytest

from fs_ray.local_cluster import (
    BLOCK,
    LocalCluster,
    PortConflict,
    WorkerNode,
    check_ports,
    ephemeral_ports,
    node_port_flags,
    port_plan,
    reserve_ports,
)


def test_the_failure_ci_met_is_refused_naming_both_components():
    cluster = LocalCluster(gcs_port=6390, dashboard_port=32983, port_base=32000)
    with pytest.raises(PortConflict, match=r"head\.dashboard-port 32983 overlaps head\.worker-ports 32100-32999"):
        check_ports(cluster)
    head = LocalCluster(gcs_port=6390, dashboard_port=8266, port_base=23000)
    check_ports(head)
    with pytest.raises(PortConflict, match=r"b\.node-manager-port 23510 overlaps head\.worker-ports 23100-23999"):
        check_ports(head, [WorkerNode(head, "b", port_base=23500)])
    with pytest.raises(PortConflict, match=r"b\.node-manager-port 23010 overlaps head\.node-manager-port"):
        WorkerNode(head, "b", port_base=23000).start()  # refused before any process starts
    with pytest.raises(PortConflict, match="outside 1-65535"):
        check_ports(LocalCluster(port_base=65000))


def test_flags_open_exactly_the_planned_ports():
    plan = port_plan(LocalCluster(gcs_port=6390, dashboard_port=8266, port_base=23000))
    flags = dict(f.removeprefix("--").split("=") for f in node_port_flags(23000))
    assert int(flags["min-worker-port"]) == plan["head.worker-ports"].start
    assert int(flags["max-worker-port"]) == plan["head.worker-ports"].stop - 1
    for name, value in flags.items():
        if "worker-port" not in name:
            assert plan[f"head.{name}"] == range(int(value), int(value) + 1)


def test_any_reservation_is_disjoint_and_below_the_ephemeral_range():
    """A property over many allocations: random ports taken by other programs, random numbers of
    nodes and start points; every reservation avoids the taken ports, the ephemeral range and
    itself, and passes the same check ``ray start`` is guarded by."""
    for seed in range(500):
        _one_reservation(random.Random(seed))


def _one_reservation(rng: random.Random) -> None:
    start = rng.choice([20000, 20500, 21000, 25000])
    taken = {rng.randrange(start, 32768) for _ in range(rng.randrange(0, 12))}
    nodes = rng.randrange(0, 4)
    try:
        r = reserve_ports(nodes=nodes, start=start, is_free=lambda p: p not in taken)
    except RuntimeError as err:  # only when the taken ports leave too few whole blocks
        free_blocks = [
            b for b in range(start, ephemeral_ports().start - BLOCK + 1, BLOCK) if not taken & set(range(b + 1, b + BLOCK))
        ]
        assert len(free_blocks) < nodes + 1, err
        return
    head = r.cluster()
    workers = [WorkerNode(head, f"n{i}", port_base=b) for i, b in enumerate(r.node_bases)]
    check_ports(head, workers)  # raises on any overlap
    used = [p for ports in port_plan(head, workers).values() for p in ports]
    assert len(used) == len(set(used))
    assert not taken & set(used)
    assert max(used) < ephemeral_ports().start and min(used) > start
    # separate clusters from one reservation do not meet either
    clusters = r.heads(*[f"c{i}" for i in range(nodes + 1)])
    every = [p for c in clusters for ports in port_plan(c).values() for p in ports]
    assert len(every) == len(set(every))
