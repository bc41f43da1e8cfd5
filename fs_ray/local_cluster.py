"""A private Ray cluster on this machine: the embedded default every README example submits to.

    python -m fs_ray.local_cluster up      # head + dashboard/job server, token auth on
    python -m fs_ray.local_cluster status
    python -m fs_ray.local_cluster down    # stops only the processes of this cluster

``cluster/local.sh`` wraps this. The cluster keeps everything (Ray's temp dir, logs, the state
file) under its own folder, ``$FS_RAY_CLUSTER_DIR`` or ``/tmp/fs_ray/<name>``, and uses its own
ports, so it can run beside any other Ray on the machine; ``down`` never calls ``ray stop``
(which would kill every Ray process of the user) but ends exactly the process trees whose
command lines point at this cluster's folder or GCS port.

Token authentication stays on (Ray's default since 2.52): the token lives in ``~/.ray/auth_token``
and is created on first ``up``; clients need ``RAY_AUTH_MODE=token`` (``status`` prints the line).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

DEFAULT_ROOT = Path(os.environ.get("FS_RAY_CLUSTER_ROOT", "/tmp/fs_ray"))
STATE_FILE = "cluster.json"


BLOCK = 1000  # ports one node's layout spans from its base


def node_ports(base: int, head: bool = False) -> dict[str, range]:
    """Every port one Ray node opens, laid out from ``base``, by the name of its ``ray start``
    flag (workers at base+100..base+999; the head adds the client server at base+1). base+2 and
    base+3 are free for a head's GCS and dashboard (:func:`reserve_ports` puts them there)."""
    ports = {"ray-client-server-port": range(base + 1, base + 2)} if head else {}
    for i, name in enumerate(("node-manager-port", "object-manager-port", "metrics-export-port",
                              "runtime-env-agent-port", "dashboard-agent-grpc-port",
                              "dashboard-agent-listen-port")):  # fmt: skip
        ports[name] = range(base + 10 + i, base + 11 + i)
    ports["worker-ports"] = range(base + 100, base + BLOCK)
    return ports


def node_port_flags(base: int) -> list[str]:
    """The ``ray start`` flags of :func:`node_ports` (the client server's is the head's own)."""
    ports = node_ports(base)
    workers = ports.pop("worker-ports")
    return [f"--{name}={r.start}" for name, r in ports.items()] + [
        f"--min-worker-port={workers.start}",
        f"--max-worker-port={workers.stop - 1}",
    ]


class PortConflict(ValueError):
    """Two components of a local cluster were given the same port (or overlapping ranges)."""


def port_plan(cluster: LocalCluster, nodes: list[WorkerNode] | tuple = ()) -> dict[str, range]:
    """Every port the head and ``nodes`` would open, named ``<node>.<component>``."""
    plan = {"head.gcs-port": range(cluster.gcs_port, cluster.gcs_port + 1),
            "head.dashboard-port": range(cluster.dashboard_port, cluster.dashboard_port + 1)}  # fmt: skip
    plan.update({f"head.{k}": v for k, v in node_ports(cluster.port_base, head=True).items()})
    for node in nodes:
        plan.update({f"{node.name}.{k}": v for k, v in node_ports(node.port_base).items()})
    return plan


def _show(r: range) -> str:
    return str(r.start) if len(r) == 1 else f"{r.start}-{r.stop - 1}"


def check_ports(cluster: LocalCluster, nodes: list[WorkerNode] | tuple = ()) -> None:
    """Raise :class:`PortConflict` naming both components when two ports of the head and
    ``nodes`` meet, or a port is outside 1..65535 — before ``ray start``, which would fail later
    with a less clear message (or, for a port inside another's worker range, mid-run)."""
    plan = port_plan(cluster, nodes)
    for name, r in plan.items():
        if r.start < 1 or r.stop - 1 > 65535:
            raise PortConflict(f"{name} {_show(r)} is outside 1-65535")
    ordered = sorted(plan.items(), key=lambda item: item[1].start)
    reach_name, reach = ordered[0]
    for name, r in ordered[1:]:
        if r.start < reach.stop:
            raise PortConflict(
                f"{name} {_show(r)} overlaps {reach_name} {_show(reach)}: give every component its own port "
                "(--gcs-port, --dashboard-port, --port-base: a node uses base+1..base+999)"
            )
        if r.stop > reach.stop:
            reach_name, reach = name, r


def ephemeral_ports() -> range:
    """The range the OS hands out for port 0 and outgoing connections (Linux's default elsewhere)."""
    try:
        low, high = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return range(low, high + 1)
    except (OSError, ValueError):
        return range(32768, 61000)


def _bindable(port: int) -> bool:
    return not _port_in_use(port)


@dataclass(frozen=True)
class PortReservation:
    """Ports for a head (GCS and dashboard inside its block) and ``node_bases`` for more nodes,
    one block each, none overlapping and none in the OS's ephemeral range (where a port another
    program is given by the OS, e.g. a test's ``free_port()``, could land in a worker range).
    The blocks were free when chosen; nothing holds them until ``ray start`` binds them, so two
    processes reserving at the same moment can be given the same block."""

    gcs_port: int
    dashboard_port: int
    port_base: int
    node_bases: tuple[int, ...] = ()

    def cluster(self, **kw) -> LocalCluster:
        return LocalCluster(gcs_port=self.gcs_port, dashboard_port=self.dashboard_port, port_base=self.port_base, **kw)

    def heads(self, *names: str, **kw) -> list[LocalCluster]:
        """Separate clusters, one per block (the head's, then each node block's)."""
        bases = (self.port_base, *self.node_bases)[: len(names)]
        if len(bases) < len(names):
            raise ValueError(f"{len(names)} clusters need {len(names)} blocks; {len(bases)} reserved")
        return [LocalCluster(name=n, gcs_port=b + 2, dashboard_port=b + 3, port_base=b, **kw) for n, b in zip(names, bases, strict=True)]


def reserve_ports(nodes: int = 0, start: int = 20000, is_free=_bindable) -> PortReservation:
    """Blocks of :data:`BLOCK` ports from ``start`` (above Ray's default worker ports,
    10002-19999, used by an in-process ``ray.init``) up to the ephemeral range, whose every
    port is free now (``is_free``): one for the head, one per extra node."""
    end = ephemeral_ports().start
    bases = []
    for base in range(start, end - BLOCK + 1, BLOCK):
        if all(is_free(p) for p in range(base + 1, base + BLOCK)):
            bases.append(base)
            if len(bases) == nodes + 1:
                head = bases[0]
                return PortReservation(head + 2, head + 3, head, tuple(bases[1:]))
    raise RuntimeError(
        f"no {nodes + 1} free blocks of {BLOCK} ports between {start} and {end} (below the ephemeral range)"
    )


@dataclass
class LocalCluster:
    """Where and on which ports a local cluster lives. Defaults avoid Ray's own (6379, 8265)."""

    name: str = "local"
    root: Path = field(default_factory=lambda: DEFAULT_ROOT)
    gcs_port: int = 6390
    dashboard_port: int = 8266
    port_base: int = 23000  # client server, raylet, object manager, agents; workers at base+100..base+999
    num_cpus: int | None = None
    resources: dict[str, float] = field(default_factory=dict)

    @property
    def dir(self) -> Path:
        override = os.environ.get("FS_RAY_CLUSTER_DIR") if self.name == "local" else None
        return Path(override) if override else self.root / self.name

    @property
    def temp_dir(self) -> Path:
        return self.dir / "ray"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def state_path(self) -> Path:
        return self.dir / STATE_FILE

    def start_command(self) -> list[str]:
        ray = str(Path(sys.executable).parent / "ray")
        b = self.port_base
        cmd = [
            ray, "start", "--head",
            f"--port={self.gcs_port}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={b + 1}",
            *node_port_flags(b),
            f"--temp-dir={self.temp_dir}",
            "--disable-usage-stats",
        ]  # fmt: skip
        if self.num_cpus is not None:
            cmd.append(f"--num-cpus={self.num_cpus}")
        if self.resources:
            cmd.append(f"--resources={json.dumps(self.resources)}")
        return cmd


@dataclass
class WorkerNode:
    """Another Ray node on this machine joining a :class:`LocalCluster`: its own temp dir, ports
    and resources, so tests and demos can run (and lose) a second node without a second machine."""

    cluster: LocalCluster
    name: str
    port_base: int
    num_cpus: int = 1
    resources: dict[str, float] = field(default_factory=dict)

    @property
    def temp_dir(self) -> Path:
        return self.cluster.dir / f"node-{self.name}"

    def start_command(self) -> list[str]:
        ray = str(Path(sys.executable).parent / "ray")
        b = self.port_base
        cmd = [
            ray, "start", f"--address=127.0.0.1:{self.cluster.gcs_port}",
            *node_port_flags(b),
            f"--temp-dir={self.temp_dir}",
            f"--num-cpus={self.num_cpus}",
            "--disable-usage-stats",
        ]  # fmt: skip
        if self.resources:
            cmd.append(f"--resources={json.dumps(self.resources)}")
        return cmd

    def start(self) -> None:
        check_ports(self.cluster, [self])
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(self.start_command(), env=client_env(), capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"node {self.name} did not start: {out.stderr[-2000:] or out.stdout[-2000:]}")

    def processes(self) -> list[psutil.Process]:
        marker = str(self.temp_dir)
        roots = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                if marker in " ".join(proc.info["cmdline"] or []) and proc.pid != os.getpid():
                    roots.append(proc)
            except (psutil.Error, TypeError):
                continue
        found = {p.pid: p for p in roots}
        for proc in roots:
            try:
                found.update({c.pid: c for c in proc.children(recursive=True)})
            except psutil.Error:
                continue
        return list(found.values())

    def kill(self) -> int:
        """SIGKILL every process of this node, as when a machine disappears. Returns how many."""
        killed = 0
        while procs := self.processes():
            for proc in procs:
                try:
                    proc.kill()
                    killed += 1
                except psutil.NoSuchProcess:
                    continue
            psutil.wait_procs(procs, timeout=5)
        return killed


def client_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for Ray processes and clients of a token-authenticated cluster.

    The venv's bin goes first on PATH so that job entrypoints (``python jobs/...``) run with the
    interpreter that has fs_ray installed.
    """
    env = dict(os.environ if base is None else base)
    env["RAY_AUTH_MODE"] = "token"
    bin_dir = str(Path(sys.executable).parent)
    if not env.get("PATH", "").startswith(bin_dir + os.pathsep):
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


def ensure_token() -> Path:
    """Create ``~/.ray/auth_token`` through Ray's own CLI if it does not exist yet."""
    token = Path.home() / ".ray" / "auth_token"
    if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or token.exists()):
        ray = str(Path(sys.executable).parent / "ray")
        subprocess.run(
            [ray, "get-auth-token", "--generate"], env=client_env(), check=True, capture_output=True
        )
    return token


def _auth_header() -> dict[str, str]:
    token = os.environ.get("RAY_AUTH_TOKEN")
    if not token:
        path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
        token = path.read_text().strip() if path.exists() else ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def job_server_ready(cluster: LocalCluster, timeout: float = 2.0) -> bool:
    """True once the dashboard's job API answers an authenticated request."""
    req = urllib.request.Request(f"{cluster.dashboard_url}/api/jobs/", headers=_auth_header())
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def cluster_processes(cluster: LocalCluster) -> list[psutil.Process]:
    """Every live process of this cluster, children included.

    A process is ours when its command line names this cluster's temp dir (GCS, raylet,
    dashboard, monitors). The Ray client server names only the GCS address, so processes naming
    our GCS port count too, but only while a process of ours is alive: the port is then ours,
    and a stranger's cluster that happens to use the same port is never touched.
    """
    marker_dir = str(cluster.temp_dir)
    marker_gcs = f":{cluster.gcs_port}"
    by_dir: dict[int, psutil.Process] = {}
    by_port: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
        except (psutil.Error, TypeError):
            continue
        if proc.pid == os.getpid():
            continue
        if marker_dir in cmdline:
            by_dir[proc.pid] = proc
        elif marker_gcs in cmdline and "ray" in cmdline:
            by_port[proc.pid] = proc
    roots = {**by_dir, **by_port} if by_dir else {}
    found: dict[int, psutil.Process] = dict(roots)
    for proc in roots.values():
        try:
            for child in proc.children(recursive=True):
                found[child.pid] = child
        except psutil.Error:
            continue
    return list(found.values())


def _port_in_use(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return True
    return False


def up(cluster: LocalCluster, wait_s: float = 90.0, quiet: bool = False) -> dict:
    """Start the head node (idempotent: an already running cluster is reported, not restarted)."""
    say = (lambda *_: None) if quiet else print
    # Ray puts unix sockets at <temp_dir>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store
    longest = len(str(cluster.temp_dir)) + len(
        "/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store"
    )
    if longest > 107:
        raise RuntimeError(
            f"cluster folder {cluster.dir} is too long for Ray's unix sockets ({longest} > 107 bytes); "
            "use a shorter FS_RAY_CLUSTER_DIR or FS_RAY_CLUSTER_ROOT"
        )
    if cluster_processes(cluster) and job_server_ready(cluster):
        say(f"fs_ray local cluster '{cluster.name}' is already up.")
        state = json.loads(cluster.state_path.read_text()) if cluster.state_path.exists() else {}
        if not quiet:
            print_connection(cluster)
        return state
    if cluster_processes(cluster):
        say(f"cleaning up a half-started cluster '{cluster.name}' first")
        down(cluster, quiet=True)
    try:
        check_ports(cluster)
    except PortConflict as err:
        raise RuntimeError(str(err)) from None
    busy = [p for p in (cluster.gcs_port, cluster.dashboard_port) if _port_in_use(p)]
    if busy:
        raise RuntimeError(
            f"port(s) {', '.join(map(str, busy))} already in use by another program (another Ray?); "
            "pick others with --gcs-port/--dashboard-port or FS_RAY_GCS_PORT/FS_RAY_DASHBOARD_PORT"
        )
    cluster.dir.mkdir(parents=True, exist_ok=True)
    ensure_token()
    log = cluster.dir / "ray-start.log"
    say(f"starting Ray head '{cluster.name}' (temp dir {cluster.temp_dir}) ...")
    with log.open("w") as out:
        proc = subprocess.run(cluster.start_command(), env=client_env(), stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        down(cluster, quiet=True)
        raise RuntimeError(f"ray start failed (exit {proc.returncode}); log {log}:\n{tail}")
    deadline = time.monotonic() + wait_s
    while not job_server_ready(cluster):
        if time.monotonic() > deadline:
            down(cluster, quiet=True)
            raise RuntimeError(
                f"the job server at {cluster.dashboard_url} did not answer within {wait_s:.0f}s; see {log}"
            )
        time.sleep(0.5)
    state = {
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cluster).items()},
        "dashboard_url": cluster.dashboard_url,
        "gcs_address": f"127.0.0.1:{cluster.gcs_port}",
        "temp_dir": str(cluster.temp_dir),
        "pids": sorted(p.pid for p in cluster_processes(cluster)),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    cluster.state_path.write_text(json.dumps(state, indent=2))
    if not quiet:
        print_connection(cluster)
    return state


def down(cluster: LocalCluster, timeout_s: float = 15.0, quiet: bool = False) -> int:
    """Stop this cluster's processes (SIGTERM, then SIGKILL). Returns how many were stopped."""
    say = (lambda *_: None) if quiet else print
    stopped: set[int] = set()
    start = time.monotonic()
    # Raylets spawn workers while dying, so look again until nothing of ours is left;
    # SIGTERM first, SIGKILL once half the grace period is gone.
    while procs := cluster_processes(cluster):
        sig = signal.SIGTERM if time.monotonic() - start < timeout_s / 2 else signal.SIGKILL
        for proc in procs:
            try:
                proc.send_signal(sig)
                stopped.add(proc.pid)
            except psutil.NoSuchProcess:
                continue
        psutil.wait_procs(procs, timeout=2.0)
        if time.monotonic() - start > 2 * timeout_s:
            left = ", ".join(str(p.pid) for p in cluster_processes(cluster))
            raise RuntimeError(f"could not stop processes {left} of cluster '{cluster.name}'")
    if cluster.state_path.exists():
        cluster.state_path.unlink()
    say(
        f"fs_ray local cluster '{cluster.name}': stopped {len(stopped)} processes"
        if stopped
        else f"fs_ray local cluster '{cluster.name}' was not running"
    )
    return len(stopped)


def status(cluster: LocalCluster) -> bool:
    procs = cluster_processes(cluster)
    ready = bool(procs) and job_server_ready(cluster)
    if not procs:
        print(f"fs_ray local cluster '{cluster.name}': down")
        return False
    print(
        f"fs_ray local cluster '{cluster.name}': {'up' if ready else 'starting or broken'} ({len(procs)} processes)"
    )
    if ready:
        print_connection(cluster)
        ray = str(Path(sys.executable).parent / "ray")
        subprocess.run(
            [ray, "status", f"--address=127.0.0.1:{cluster.gcs_port}"], env=client_env(), check=False
        )
    return ready


def print_connection(cluster: LocalCluster) -> None:
    print(
        f"""
  dashboard / job server : {cluster.dashboard_url}
  GCS address            : 127.0.0.1:{cluster.gcs_port}
  logs                   : {cluster.temp_dir}/session_latest/logs

  Submit a job from this checkout (token auth is on):
    export RAY_ADDRESS={cluster.dashboard_url} RAY_AUTH_MODE=token
    ray job submit --working-dir . -- python jobs/prepare.py --config jobs/configs/prepare_demo.yaml
    ray job list
  Stop it:  cluster/local.sh down
"""
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cluster/local.sh",
        description="Start, inspect or stop fs_ray's private local Ray cluster (head node with the job server, "
        "token auth on, own temp dir and ports).",
    )
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--name", default="local", help="Cluster name; its files live in /tmp/fs_ray/<name>.")
    parser.add_argument("--num-cpus", type=int, default=None, help="CPUs the head offers (default: all).")
    parser.add_argument("--gcs-port", type=int, default=int(os.environ.get("FS_RAY_GCS_PORT", 6390)))
    parser.add_argument(
        "--dashboard-port", type=int, default=int(os.environ.get("FS_RAY_DASHBOARD_PORT", 8266))
    )
    parser.add_argument("--port-base", type=int, default=int(os.environ.get("FS_RAY_PORT_BASE", 23000)))
    args = parser.parse_args(argv)
    cluster = LocalCluster(
        name=args.name,
        gcs_port=args.gcs_port,
        dashboard_port=args.dashboard_port,
        port_base=args.port_base,
        num_cpus=args.num_cpus,
    )
    if shutil.which("ray", path=str(Path(sys.executable).parent)) is None:
        print(f"error: no 'ray' next to {sys.executable}; run cluster/setup.sh first", file=sys.stderr)
        return 1
    try:
        if args.action == "up":
            up(cluster)
            return 0
        if args.action == "down":
            down(cluster)
            return 0
        return 0 if status(cluster) else 3
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
