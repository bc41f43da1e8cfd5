"""Say so when a run waits for resources the cluster does not have free.

Ray Train starts a run's workers only once its placement group (one bundle per worker) fits on
the cluster; until then the job sits at 0% without a word. :class:`ResourceWait` watches for a
pending placement group shaped like the run's and, past ``after_s``, prints what the run asked
for, what the cluster has free, who holds the rest, and how to free it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any


def _same_bundles(pg: dict[str, Any], bundle: dict[str, float], count: int) -> bool:
    bundles = list((pg.get("bundles") or {}).values())
    return len(bundles) == count and all(
        {k: float(v) for k, v in b.items() if not k.startswith("bundle_group")} == bundle for b in bundles
    )


def holders() -> list[str]:
    """'<actor class> <resources>' for every live actor that holds CPUs or GPUs (needs the state API)."""
    from ray.util.state import list_actors

    held: Counter = Counter()
    for actor in list_actors(filters=[("state", "=", "ALIVE")], detail=True, limit=10_000, raise_on_missing_output=False):
        need = {k: v for k, v in (getattr(actor, "required_resources", None) or {}).items() if k in ("CPU", "GPU") and v}
        if need:
            held[(actor.class_name, tuple(sorted(need.items())))] += 1
    return [
        f"{n} x {name} ({', '.join(f'{v:g} {k}' for k, v in need)})" for (name, need), n in sorted(held.items())
    ]


def waiting_message(label: str, bundle: dict[str, float], count: int) -> str:
    import ray

    free = ray.available_resources()
    total = ray.cluster_resources()
    keys = sorted(k for k in bundle if k in ("CPU", "GPU")) or ["CPU"]
    lines = [
        f"[{label}] waiting for resources: the run asks for {count} worker(s) x "
        + ", ".join(f"{bundle.get(k, 0):g} {k}" for k in keys)
        + "; the cluster has "
        + ", ".join(f"{free.get(k, 0):g} of {total.get(k, 0):g} {k}" for k in keys)
        + " free.",
    ]
    try:
        held = holders()
    except Exception as err:  # no dashboard (state API) on this cluster
        held = [f"(cannot list them: {type(err).__name__})"]
    if held:
        lines.append("  held by: " + "; ".join(held))
    lines.append(
        "  to free them: stop a Serve application (`serve shutdown`, or `serve/deploy.py` with fewer "
        "replicas.num_cpus), stop another job (`ray job stop <id>`), or ask for fewer "
        "(scaling.num_workers, scaling.cpus_per_worker). An autoscaling cluster adds nodes by itself."
    )
    return "\n".join(lines)


class ResourceWait(threading.Thread):
    """Background watcher for the driver: prints :func:`waiting_message` once the run's placement
    group has been pending for ``after_s``, and again every ``every_s`` while it still waits."""

    def __init__(self, label: str, bundle: dict[str, float], count: int, after_s: float = 30.0,
                 every_s: float = 300.0, poll_s: float = 2.0, log=print):  # fmt: skip
        super().__init__(daemon=True, name="fs_ray-resource-wait")
        self.label, self.bundle, self.count = label, {k: float(v) for k, v in bundle.items()}, count
        self.after_s, self.every_s, self.poll_s, self.log = after_s, every_s, poll_s, log
        self.said = 0
        self._halt = threading.Event()

    def run(self) -> None:
        import ray

        since: float | None = None
        last_said = -float("inf")
        while not self._halt.wait(self.poll_s):
            try:
                pending = any(
                    pg.get("state") == "PENDING" and _same_bundles(pg, self.bundle, self.count)
                    for pg in ray.util.placement_group_table().values()
                )
            except Exception:
                return  # Ray went away: nothing left to watch
            now = time.monotonic()
            since = (since or now) if pending else None
            if since is not None and now - since >= self.after_s and now - last_said >= self.every_s:
                self.log(waiting_message(self.label, self.bundle, self.count))
                self.said += 1
                last_said = now

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)
