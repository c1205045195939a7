"""Peers: Procrastinate and PgQueuer beside swf-celery on the same database, and what
Celery itself costs per task (on kombu's in-process ``memory://`` broker).

Procrastinate and PgQueuer are Postgres-native job queues a user might pick instead of
Celery on PostgreSQL. Each runs its simplest no-op job (``async``, the shape both document)
on a scratch database of the same server as swf's, in the same shapes:

* **throughput**: 1000 jobs enqueued one by one from one client while one worker process
  with concurrency 2 drains them; jobs/s from the first enqueue to the last job finished,
  the enqueue rate, and CPU per job by role (client, worker processes, PostgreSQL);
* **consumers**: the same with 4 worker processes of concurrency 1;
* **backlog**: 10,000 jobs enqueued (each system's batch API) with no worker, then one
  worker (concurrency 2): its drain rate over 10 s;
* **round trip**: 100 sequential enqueue → finished latencies with one idle worker.

The peers run only in ``.venv-peers`` (``make peers-venv``, built from
``benchmarks/peers-requirements.lock``; made here when missing), their workers and clients
as subprocesses (``benchmarks/peers/``), so their libraries never load into this process.
swf is measured as ``bench_processes`` measures it: ``celery worker --pool=prefork`` on the
swf:// broker, results in Redis collected by the client. Celery's own cost is the same
worker on ``memory://`` with the same Redis results, its client a thread inside the worker
(``benchmarks/memory_app.py``): there is no broker server to pay. A point that fails is
reported as failed with its reason; the rest still run.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psycopg
from celery import group

from benchmarks import bench_scale
from benchmarks.bench_processes import QUEUE as SWF_QUEUE
from benchmarks.bench_processes import consumer_processes
from benchmarks.bench_scale import (
    BACKEND,
    client_app,
    drain_rate,
    scratch_database,
    time_round_trips,
    total_cpu,
)
from benchmarks.cpu import CpuMeter, postmaster_pid
from benchmarks.peers.client import queue_names
from benchmarks.stats import LoadProbe, percentile, round_order, spread
from swf_celery import db
from swf_celery.testing import stop_worker
from tests.helpers import ROOT, sql_value, wait_until, worker_process

TASKS = 1000
BACKLOG = 10_000
ROUND_TRIPS = 100
#: Rounds of the throughput and consumer shapes (the systems' order alternating); the
#: backlog and round-trip shapes run once.
ROUNDS = int(os.environ.get("BENCH_PEERS_ROUNDS", "3"))
CONSUMERS = 4
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
PEERS_STAMP = ROOT / ".venv-peers" / ".installed"
MEMORY_QUEUE = "peers-memory"

SWF = "swf-celery"
PROCRASTINATE = "Procrastinate"
PGQUEUER = "PgQueuer"
PGQUEUER_DEFAULTS = "PgQueuer, its defaults"
MEMORY = "Celery on memory://"


@dataclass(frozen=True)
class Peer:
    """How the harness drives one peer: its client module, its worker's command line (of
    its concurrency and the number of queues it consumes, ``client.queue_names``), and the
    SQL that counts its unfinished and its waiting jobs."""

    name: str
    module: str
    worker: Callable[[int, int], list[str]]
    unfinished: str
    waiting: str


def _procrastinate_worker(concurrency: int, queues: int) -> list[str]:
    return ["-m", "procrastinate", "--app", "benchmarks.peers.procrastinate_app.app",
            "--log-level", "warning", "worker", "--queues", ",".join(queue_names(queues)),
            "--concurrency", str(concurrency)]


def _pgqueuer_worker(concurrency: int, queues: int) -> list[str]:
    # batch_size 1 and a cap of `concurrency` picked jobs; PgQueuer wants the cap at least
    # twice the batch, so a worker of concurrency 1 runs uncapped with batches of 1.
    return ["-m", "benchmarks.peers.pgqueuer_side", "worker", "1",
            str(concurrency if concurrency >= 2 else 0), str(queues)]


def _pgqueuer_defaults_worker(_: int, queues: int) -> list[str]:
    return ["-m", "benchmarks.peers.pgqueuer_side", "worker", "10", "0", str(queues)]


_PROCRASTINATE_SQL = "SELECT count(*) FROM procrastinate_jobs WHERE status IN ({})"
_PGQUEUER_SQL = "SELECT count(*) FROM pgqueuer"
PEERS = {
    PROCRASTINATE: Peer(PROCRASTINATE, "benchmarks.peers.procrastinate_side",
                        _procrastinate_worker, _PROCRASTINATE_SQL.format("'todo', 'doing'"),
                        _PROCRASTINATE_SQL.format("'todo'")),
    PGQUEUER: Peer(PGQUEUER, "benchmarks.peers.pgqueuer_side", _pgqueuer_worker,
                   _PGQUEUER_SQL, _PGQUEUER_SQL + " WHERE status = 'queued'"),
    PGQUEUER_DEFAULTS: Peer(PGQUEUER_DEFAULTS, "benchmarks.peers.pgqueuer_side",
                            _pgqueuer_defaults_worker, _PGQUEUER_SQL,
                            _PGQUEUER_SQL + " WHERE status = 'queued'"),
}


class PointFailed(Exception):
    """Raised when a peer's process fails or a point does not finish in time."""


# -- the peers' environment and processes --------------------------------------------------


def peers_environment() -> str | None:
    """Build ``.venv-peers`` when missing; the reason it cannot be had, else None."""
    if PEERS_STAMP.exists():
        return None
    done = subprocess.run(["make", "-C", str(ROOT), "peers-venv"], capture_output=True,
                          text=True, timeout=900)
    if done.returncode != 0 or not PEERS_STAMP.exists():
        return f"make peers-venv failed: {(done.stderr or done.stdout).strip()[-300:]}"
    return None


def _peer_dsn(url: str) -> str:
    """The database URL without its query string (asyncpg takes its parameters for server
    settings)."""
    return url.partition("?")[0]


def _peer_env(url: str) -> dict[str, str]:
    return dict(os.environ, PEERS_DSN=_peer_dsn(url), PYTHONPATH=str(ROOT))


def peer_run(peer: Peer, url: str, *args: str, stdin: str = "",
              timeout: float = 120) -> dict[str, Any]:
    """Run one client command to its end; its JSON report."""
    done = subprocess.run([str(PEERS_PYTHON), "-m", peer.module, *args], input=stdin,
                          capture_output=True, text=True, env=_peer_env(url), cwd=ROOT,
                          timeout=timeout)
    if done.returncode != 0:
        raise PointFailed(f"{' '.join(args)}: {done.stderr.strip()[-300:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _tail(log: IO[bytes]) -> str:
    log.flush()
    return Path(log.name).read_text(errors="replace").strip()[-300:]


class _Workers:
    """A peer's running worker processes and their logs."""

    def __init__(self) -> None:
        self.procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc, _ in self.procs]

    def check(self) -> None:
        """Raise PointFailed, with the end of its log, when a worker has exited."""
        for proc, log in self.procs:
            if proc.poll() is not None:
                raise PointFailed(f"worker exited ({proc.returncode}): {_tail(log)}")


@contextlib.contextmanager
def peer_workers(peer: Peer, url: str, concurrencies: list[int],
                 queues: int = 1) -> Iterator[_Workers]:
    """The peer's worker processes, one per concurrency, each consuming ``queues`` queues.
    Stopped with TERM (both peers finish their running jobs and exit), then KILL."""
    workers = _Workers()
    try:
        for c in concurrencies:
            log = tempfile.NamedTemporaryFile(prefix="peers-worker-", suffix=".log")
            workers.procs.append((subprocess.Popen(
                [str(PEERS_PYTHON), *peer.worker(c, queues)], stdout=log, stderr=subprocess.STDOUT,
                env=_peer_env(url), cwd=ROOT, start_new_session=True), log))
        yield workers
        workers.check()
    finally:
        for proc, log in workers.procs:
            stop_worker(proc)
            log.close()


def until_finished(peer: Peer, url: str, workers: _Workers, timeout: float = 300) -> float:
    """Poll (every 10 ms) until the peer has no unfinished job; the time it saw none."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while conn.execute(peer.unfinished).fetchone()[0]:
            workers.check()
            if time.monotonic() > deadline:
                raise PointFailed(f"jobs unfinished after {timeout:.0f} s")
            time.sleep(0.01)
    return time.time()


def metered_enqueue(peer: Peer, url: str, pids: list[int], queues: int = 1
                    ) -> tuple[dict[str, Any], CpuMeter]:
    """Start the client, start the CPU meter once it is connected, let it enqueue TASKS
    jobs one by one (round-robin over ``queues`` queues); its report and the running
    meter."""
    proc = subprocess.Popen([str(PEERS_PYTHON), "-m", peer.module, "enqueue", str(TASKS),
                             str(queues)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_peer_env(url), cwd=ROOT)
    assert proc.stdin is not None and proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise PointFailed(f"client: {proc.communicate(timeout=30)[1].strip()[-300:]}")
    meter = CpuMeter(pids, bench_scale.POSTMASTER)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    out, err = proc.communicate(timeout=300)
    if proc.returncode != 0:
        raise PointFailed(f"client: {err.strip()[-300:]}")
    return json.loads(out.strip().splitlines()[-1]), meter


# -- points --------------------------------------------------------------------------------


def _roles(spent: dict[str, float], client: float, redis: bool = True) -> dict[str, float]:
    """CPU ms per job by the table's roles, from a CpuMeter's seconds (Redis only where it
    holds the results: other work on the machine may use it too)."""
    roles = {"client": client / TASKS * 1000,
             "workers": (spent.get("worker main", 0.0) + spent.get("pool children", 0.0))
             / TASKS * 1000,
             "PostgreSQL": spent.get("PostgreSQL", 0.0) / TASKS * 1000}
    if redis:
        roles["Redis"] = spent.get("redis-server", 0.0) / TASKS * 1000
    return roles


def _peer_point(peer: Peer, url: str, concurrencies: list[int],
                round_trips: bool) -> dict[str, Any]:
    with peer_workers(peer, url, concurrencies) as workers:
        peer_run(peer, url, "enqueue", str(2 * len(concurrencies)), stdin="go\n")  # warm-up
        until_finished(peer, url, workers, timeout=120)
        time.sleep(2.0)
        report, meter = metered_enqueue(peer, url, workers.pids)
        end = until_finished(peer, url, workers)
        spent = meter.stop()
        point: dict[str, Any] = {"throughput": TASKS / (end - report["start"]),
                                 "enqueue": TASKS / report["seconds"],
                                 "cpu": _roles(spent, report["cpu"], redis=False)}
        if round_trips:
            point["latencies"] = peer_run(peer, url, "round-trips",
                                           str(ROUND_TRIPS))["latencies"]
    return point


def _swf_point(url: str, layout: str, count: int, round_trips: bool) -> dict[str, Any]:
    app = client_app(db.broker_url(url))
    try:
        with consumer_processes(db.broker_url(url), layout, count) as pids:
            for r in [app.send_task("bench.noop", queue=SWF_QUEUE) for _ in range(2 * count)]:
                r.get(timeout=120)  # warm-up: every pool child has its connections
            time.sleep(2.0)
            meter = CpuMeter(pids, bench_scale.POSTMASTER)
            cpu0, start = time.process_time(), time.perf_counter()
            results = [app.send_task("bench.noop", queue=SWF_QUEUE) for _ in range(TASKS)]
            sent = time.perf_counter() - start
            for r in results:
                r.get(timeout=300)
            elapsed = time.perf_counter() - start
            spent = meter.stop()
            point: dict[str, Any] = {"throughput": TASKS / elapsed, "enqueue": TASKS / sent,
                                     "cpu": _roles(spent, time.process_time() - cpu0)}
            if round_trips:
                point["latencies"] = time_round_trips(app, [SWF_QUEUE], ROUND_TRIPS)
    finally:
        app.close()
    return point


def _memory_point(round_trips: bool) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix="peers-memory-"))
    env = {"BENCH_BROKER": "memory://", "BENCH_BACKEND": BACKEND, "BENCH_QUEUE": MEMORY_QUEUE,
           "BENCH_TRANSPORT_OPTIONS": json.dumps({"polling_interval": 0.001}),
           "BENCH_MEMORY_DIR": str(folder), "BENCH_MEMORY_TASKS": str(TASKS),
           "BENCH_MEMORY_ROUND_TRIPS": str(ROUND_TRIPS if round_trips else 0)}
    try:
        with worker_process("benchmarks.memory_app", queues=[MEMORY_QUEUE], env=env,
                            concurrency=2, pool="prefork", ready_timeout=120) as proc:
            wait_until((folder / "ready").exists, 120, "memory:// warm-up", proc=proc)
            time.sleep(2.0)
            meter = CpuMeter(proc.pid, bench_scale.POSTMASTER)
            (folder / "go").touch()
            wait_until((folder / "throughput.json").exists, 300, "memory:// tasks", proc=proc,
                       interval=0.01)
            spent = meter.stop()
            report = json.loads((folder / "throughput.json").read_text())
            wait_until((folder / "round_trips.json").exists, 300, "memory:// round trips",
                       proc=proc)
            latencies = json.loads((folder / "round_trips.json").read_text())["latencies"]
    finally:
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()
    spent["worker main"] = spent.get("worker main", 0.0) - report["cpu"]  # the client thread
    point = {"throughput": TASKS / report["seconds"], "enqueue": TASKS / report["enqueue"],
             "cpu": _roles(spent, report["cpu"])}
    return {**point, "latencies": latencies} if round_trips else point


def install(peer: Peer, url: str, versions: dict[str, str]) -> None:
    versions[peer.name.split(",")[0]] = peer_run(peer, url, "install")["version"]


def _point(database_url: str, system: str, shape: str, round_trips: bool,
           versions: dict[str, str]) -> dict[str, Any]:
    """One system at one shape (``throughput`` or ``consumers``), on a fresh database;
    ``{"error": reason}`` when it fails."""
    label = f"{shape[:4]}_{system.split(',')[0].split()[0].lower()}"
    concurrencies = [2] if shape == "throughput" else [1] * CONSUMERS
    try:
        if system == MEMORY:
            return _memory_point(round_trips)
        if system == SWF:
            layout = "children" if shape == "throughput" else "workers"
            count = 2 if shape == "throughput" else CONSUMERS
            with scratch_database(database_url, label) as url:
                return _swf_point(url, layout, count, round_trips)
        peer = PEERS[system]
        if (reason := peers_environment()) is not None:
            return {"error": reason}
        with scratch_database(database_url, label, migrated=False) as url:
            install(peer, url, versions)
            return _peer_point(peer, url, concurrencies, round_trips)
    except Exception as exc:  # noqa: BLE001 - a failed point is reported, not fatal
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}


def _backlog_point(database_url: str, system: str,
                   versions: dict[str, str]) -> dict[str, Any]:
    """BACKLOG jobs enqueued with no worker, then one worker's drain rate."""
    try:
        if system == SWF:
            with scratch_database(database_url, "backlog_swf") as url:
                app = client_app(db.broker_url(url))
                try:
                    t0 = time.perf_counter()
                    group(app.signature("bench.noop", queue=SWF_QUEUE)
                          for _ in range(BACKLOG)).apply_async()
                    fill = time.perf_counter() - t0
                finally:
                    app.close()
                env = {"BENCH_BROKER": db.broker_url(url), "BENCH_BACKEND": BACKEND,
                       "BENCH_QUEUE": SWF_QUEUE, "BENCH_TRANSPORT_OPTIONS": "{}"}
                worker = worker_process("benchmarks.broker_app", queues=[SWF_QUEUE], env=env,
                                        concurrency=2, pool="prefork", ready_timeout=120)
                size = "SELECT swf.queue_size('" + SWF_QUEUE + "')"
                return {"fill": fill, "drain": drain_rate(lambda: int(sql_value(url, size)), worker,
                                                          step=0.1)}
        if (reason := peers_environment()) is not None:
            return {"error": reason}
        peer = PEERS[system]
        with scratch_database(database_url, f"backlog_{system.lower()}",
                              migrated=False) as url:
            install(peer, url, versions)
            fill = peer_run(peer, url, "fill", str(BACKLOG))["seconds"]
            return {"fill": fill, "drain": drain_rate(lambda: int(sql_value(url, peer.waiting)),
                                                      peer_workers(peer, url, [2]),
                                                      step=0.1)}
    except Exception as exc:  # noqa: BLE001 - a failed point is reported, not fatal
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}


# -- report --------------------------------------------------------------------------------


def _failed(points: list[dict[str, Any]]) -> str | None:
    errors = [p["error"] for p in points if "error" in p]
    return errors[0] if len(errors) == len(points) else None


def _first(points: list[dict[str, Any]]) -> dict[str, Any]:
    return next(p for p in points if "error" not in p)


def _values(points: list[dict[str, Any]], value: Callable[[dict[str, Any]], float]
            ) -> list[float]:
    return [value(p) if "error" not in p else float("nan") for p in points]




def _throughput_table(data: dict[str, list[dict[str, Any]]]) -> list[str]:
    lines = ["| system | jobs/s | enqueue (jobs/s) | CPU/job (ms): client | workers "
             "| PostgreSQL | Redis (results) | all |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for system, points in data.items():
        if (error := _failed(points)) is not None:
            lines.append(f"| {system} | failed: {error} | | | | | | |")
            continue
        cells = [spread(_values(points, lambda p: p["throughput"]), ".0f"),
                 spread(_values(points, lambda p: p["enqueue"]), ".0f")]
        cells += [spread(_values(points, lambda p, r=role: p["cpu"][r]), ".2f")
                  if role in _first(points)["cpu"] else "–"
                  for role in ("client", "workers", "PostgreSQL", "Redis")]
        cells.append(spread(_values(points, total_cpu), ".2f"))
        errors = [p["error"] for p in points if "error" in p]
        note = f" ({len(errors)} round(s) failed: {errors[0]})" if errors else ""
        lines.append(f"| {system}{note} | " + " | ".join(cells) + " |")
    return lines


def _configuration(versions: dict[str, str]) -> str:
    import celery
    import kombu

    procrastinate = versions.get(PROCRASTINATE, "not installed")
    pgqueuer = versions.get(PGQUEUER, "not installed")
    return (
        f"Versions: Celery {celery.__version__}, kombu {kombu.__version__}, Procrastinate "
        f"{procrastinate}, PgQueuer {pgqueuer} (`.venv-peers`, from "
        "`benchmarks/peers-requirements.lock`). **swf-celery**: `celery -A "
        "benchmarks.broker_app worker --pool=prefork -c 2` (consumers: 4 workers `-c 1`) "
        "on the swf:// broker at its defaults, results in Redis (`redis://…/13`), the "
        "client `send_task` then `get()` on each result, as in `bench_processes`. "
        "**Procrastinate**: `procrastinate --log-level warning worker --concurrency 2` "
        "(consumers: 4 workers `--concurrency 1`), an `async` no-op task, the client "
        "`await noop.defer_async()` per job through `PsycopgConnector`; jobs stay in "
        "`procrastinate_jobs` with their status (`delete_jobs` at its default, never). "
        "**PgQueuer**: `pgqueuer.run` (what `pgq run` drives; `pgq run` 1.6.0 itself stops "
        "at start here, its log level reaching its logger set-up as a string) on uvloop "
        "over `PgQueuer(AsyncpgDriver(connection))` with an `async` no-op entrypoint, "
        "`batch_size=1, max_concurrent_tasks=2` for concurrency 2 (consumers: "
        "`batch_size=1` uncapped, as PgQueuer wants the cap at least twice the batch); "
        "the row *its defaults* is `batch_size=10`, uncapped. The "
        "client awaits `Queries.enqueue(\"noop\", None)` per job on one asyncpg "
        "connection; a finished job is deleted and logged in `pgqueuer_log`. **Celery on "
        "memory://**: the same prefork `-c 2` worker on kombu's in-process broker (polled "
        "every 1 ms when empty), the same Redis results, the client a thread in the worker "
        "(its thread CPU is the *client* column, taken off the worker's): Celery's own "
        "cost, with no broker server. A peer's job counts as finished when the harness "
        "(polling every 10 ms, on its own connection, after the client's last enqueue) "
        "sees none unfinished (`procrastinate_jobs` status `todo`/`doing`; any row left "
        "in the `pgqueuer` table); the harness's own CPU is in no column, its polls' "
        "share is in PostgreSQL's. Each point runs on a database of its own on the same "
        "server (swf's migrated; the peers' with their own schema applied through their "
        "API)."
    )


def run(database_url: str) -> str:
    """Measure every point; return the Markdown section."""
    bench_scale.POSTMASTER = postmaster_pid(database_url)
    started = time.monotonic()
    probe = LoadProbe()
    versions: dict[str, str] = {}
    shape1 = [SWF, PROCRASTINATE, PGQUEUER, PGQUEUER_DEFAULTS, MEMORY]
    shape2 = [SWF, PROCRASTINATE, PGQUEUER]
    throughput: dict[str, list[dict[str, Any]]] = {s: [] for s in shape1}
    consumers: dict[str, list[dict[str, Any]]] = {s: [] for s in shape2}
    for n in range(ROUNDS):
        for shape, data in (("throughput", throughput), ("consumers", consumers)):
            for system in round_order(list(data), n):
                print(f"   round {n + 1} {shape}: {system}", flush=True)
                point = _point(database_url, system, shape,
                               shape == "throughput" and n == 0, versions)
                data[system].append(point)
                print(f"      {({k: v for k, v in point.items() if k != 'latencies'})}",
                      flush=True)
    backlog: dict[str, dict[str, Any]] = {}
    for system in shape2:
        print(f"   backlog: {system}", flush=True)
        backlog[system] = _backlog_point(database_url, system, versions)
        print(f"      {backlog[system]}", flush=True)
    lines = _section(probe, versions, throughput, consumers, backlog)
    lines.append(f"The section took {(time.monotonic() - started) / 60:.1f} min.")
    return "\n".join(lines) + "\n"


_COMPLETION = {
    SWF: "`apply_async().get()`: the result in Redis (`redis://…/13`), Celery's "
         "Redis backend waiting on its pub/sub",
    PROCRASTINATE: "`job_manager.get_job_status_async(id)` polled every 1 ms until "
                   "`succeeded` (Procrastinate keeps no results; its docs point to the "
                   "job's status)",
    PGQUEUER: "PgQueuer's `CompletionWatcher.wait_for(id)` (LISTEN/NOTIFY on the queue "
              "table, then a status query on `pgqueuer_log`), debounce 1 ms instead of its "
              "default 50 ms",
    MEMORY: "`apply_async().get()` from the thread in the worker, results in Redis as for "
            "swf",
}


def _section(probe: LoadProbe, versions: dict[str, str],
             throughput: dict[str, list[dict[str, Any]]],
             consumers: dict[str, list[dict[str, Any]]],
             backlog: dict[str, dict[str, Any]]) -> list[str]:
    lines = [
        "## Peers: Procrastinate, PgQueuer and Celery's own cost (`bench_peers`)",
        "",
        "Command: `python -m benchmarks.run bench_peers` (part of `make bench`; builds "
        "`.venv-peers` with `make peers-venv` when missing). Two Postgres-native job queues "
        "a user might pick instead, each running its simplest no-op job on the same "
        "PostgreSQL server as swf, in the same shapes; and Celery on its in-memory broker, "
        "which is what Celery itself costs per task. Throughput and consumers: "
        f"{TASKS} jobs enqueued one by one by one client while the workers drain them; "
        "jobs/s from the first enqueue to the last job finished; CPU per job by process "
        "role over that time (*workers*: the worker processes and their pool children; "
        "*Redis*: the result backend, swf and memory:// only, and every redis-server "
        f"process on the machine, which other work here uses too). {ROUNDS} round(s), the "
        "systems' order alternating; each cell is the median (min–max) of the rounds. "
        "The machine is shared with other work: absolute numbers are noisy.",
        "",
        _configuration(versions),
        "",
        probe.note(),
        "",
        f"### Throughput and CPU: one worker process, concurrency 2 ({TASKS} jobs)",
        "",
        *_throughput_table(throughput),
        "",
        f"### Consumers: {CONSUMERS} worker processes, concurrency 1 each ({TASKS} jobs)",
        "",
        *_throughput_table(consumers),
        "",
        "Celery on memory:// has no consumers row: its broker lives in one process.",
        "",
        f"### Backlog: {BACKLOG:,} jobs queued with no worker, then one worker "
        "(concurrency 2)",
        "",
        "| system | enqueue of the backlog (s) | drain (jobs/s) |",
        "|---|---:|---:|",
    ]
    for system, p in backlog.items():
        if "error" in p:
            lines.append(f"| {system} | failed: {p['error']} | |")
        else:
            lines.append(f"| {system} | {p['fill']:.2f} | {p['drain']:.0f} |")
    lines += [
        "",
        "The backlog is enqueued through each system's batch API (swf: a `group`, stored in "
        "one insert; Procrastinate: `batch_defer_async` of 1,000; PgQueuer: `enqueue` of "
        "lists of 1,000). The drain is timed from the worker's first job, over 10 s or "
        "until the backlog is empty, from the count of waiting jobs read every 0.1 s. "
        "Most of swf's enqueue time is Celery's: a `group` builds a full task message per "
        "job (about 0.2 ms each, the memory:// row of `bench_publish`), which the peers' "
        "batch APIs do not; the one insert of 10,000 rows takes about 0.5 s of it.",
        "",
        f"### Round trip: {ROUND_TRIPS} sequential enqueue → finished, one idle worker "
        "(concurrency 2: round 1's throughput worker, after its run)",
        "",
        "| system | p50 (ms) | p95 (ms) | how the client learns the job finished |",
        "|---|---:|---:|---|",
    ]
    for system in (SWF, PROCRASTINATE, PGQUEUER, MEMORY):
        first = throughput[system][0] if throughput[system] else {"error": "not run"}
        if "error" in first or "latencies" not in first:
            lines.append(f"| {system} | failed: {first.get('error', 'no round trips')} | "
                         f"| {_COMPLETION[system]} |")
            continue
        ms = [s * 1000 for s in first["latencies"]]
        lines.append(f"| {system} | {percentile(ms, 50):.2f} | {percentile(ms, 95):.2f} "
                     f"| {_COMPLETION[system]} |")
    lines += ["", *_celery_cost(throughput), ""]
    return lines


def _celery_cost(throughput: dict[str, list[dict[str, Any]]]) -> list[str]:
    """A sentence on Celery's own per-task CPU against swf's, from the medians."""
    swf, memory = throughput[SWF], throughput[MEMORY]
    if _failed(swf) is not None or _failed(memory) is not None:
        return []
    from benchmarks.stats import median_of

    def median(points: list[dict[str, Any]], value: Callable[[dict[str, Any]], float]
               ) -> float:
        return median_of(_values(points, value))

    celery_ms, swf_ms = median(memory, total_cpu), median(swf, total_cpu)
    pg_ms = median(swf, lambda p: p["cpu"]["PostgreSQL"])
    return [f"Celery's own cost: with no broker server, a no-op task costs {celery_ms:.2f} ms "
            "of CPU in all (client, worker and its pool, Redis results; median of the "
            f"rounds); on swf it costs {swf_ms:.2f} ms, of which PostgreSQL {pg_ms:.2f} ms: "
            f"the broker adds {swf_ms - celery_ms:.2f} ms to each task. Procrastinate's and "
            "PgQueuer's rows are their whole cost: neither has a layer like Celery's under "
            "its jobs."]
