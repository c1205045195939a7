"""``make cluster-bench``: throughput with 1, 2 and 4 worker hosts (network namespaces, see
:mod:`tests.cluster.hosts`) against one PostgreSQL, the same on Redis, a 2000-step DAG
across 4 hosts, and where the time goes (``pg_stat_statements``, lock waits).

Two shapes: ``live``, the users' (hosts consume while one client publishes, then collects
each result with ``get()``), and ``bulk`` (a queue filled first, then every host told to
consume it at once). Every host runs ``celery -A tests.cluster.app worker --pool=threads
-c 16``; tasks sleep 100 ms (I/O-bound). Needs root. ``python -m benchmarks.cluster_bench
[--hosts 1,2,4] [--shapes live,bulk] [--tasks-per-host 320] [--live-tasks-per-host 400]
[--no-dag] [--pgbouncer] [--no-write]``; the tables go into ``docs/benchmarks.md`` (section
``bench_cluster``).
"""

from __future__ import annotations

import argparse
import contextlib
import re
import statistics
import threading
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import psycopg
from celery import Celery

from benchmarks.cpu import CpuMeter, backend_cpu, process_cpu
from benchmarks.run import DOC, machine
from swf_celery import db
from swf_celery.ops import migrate
from tests.cluster import app as cluster_app
from tests.cluster.hosts import BRIDGE_IP, Cluster, unavailable_reason

CONCURRENCY = 16
NAP = 0.1
REDIS_PORT = 56379
#: The queue the measured tasks wait in until every host consumes it.
BULK = "cluster_bulk"
LAYERS, WIDTH = 40, 50  # the 2000-step DAG


#: A worker host's sessions name it in application_name (``swf-broker@host3``); the
#: client's name the machine itself.
_HOST_SESSION = re.compile(r"^(swf-[a-z]+)@host\d+$")


def _sessions(url: str) -> tuple[int, int]:
    """(worker-host sessions, sessions waiting on a lock) right now."""
    with psycopg.connect(url, autocommit=True) as conn:
        return _session_counts(conn)[:2]


def _session_counts(conn: psycopg.Connection[Any]) -> tuple[int, int, int, int]:
    """(worker-host sessions, sessions waiting on a lock, the client's publishing sessions
    running a statement, those of them waiting on a lock) right now."""
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE application_name LIKE 'swf-%%@host%%'), "
        "count(*) FILTER (WHERE wait_event_type = 'Lock'), "
        "count(*) FILTER (WHERE publishing AND state = 'active'), "
        "count(*) FILTER (WHERE publishing AND state = 'active' AND wait_event_type = 'Lock') "
        "FROM (SELECT *, application_name LIKE 'swf-broker@%%' "
        "                AND application_name NOT LIKE '%%@host%%' AS publishing "
        "        FROM pg_stat_activity WHERE pid <> pg_backend_pid()) a").fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2]), int(row[3])


def _backend_roles(url: str) -> dict[int, str]:
    """Each PostgreSQL process's role: a worker host's or the client's connection role
    (``workers: swf-broker``, ``client: swf-listen``), else its backend type."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute("SELECT pid, application_name, backend_type "
                            "FROM pg_stat_activity").fetchall()
    roles = {}
    for pid, name, backend_type in rows:
        host = _HOST_SESSION.match(name or "")
        if host:
            roles[int(pid)] = f"workers: {host.group(1)}"
        elif (name or "").startswith("swf-"):
            roles[int(pid)] = f"client: {name.partition('@')[0]}"
        else:
            roles[int(pid)] = str(backend_type)
    return roles


def _cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    fields = [float(v) for v in open("/proc/stat").readline().split()[1:]]
    return sum(fields) - fields[3] - fields[4], sum(fields)


def _server_cpu(server_pid: int | None) -> float:
    """CPU seconds used so far by the PostgreSQL server and its backends."""
    if server_pid is None:
        return 0.0
    return process_cpu(server_pid) + sum(backend_cpu(server_pid).values())


def _sample_peaks(watch: str | None, peak: list[int], done: threading.Event) -> None:
    """Every 50 ms until ``done``: the most worker-host sessions and lock waits so far
    (``peak[0]``, ``peak[1]``), and how often the client's publishing session was seen
    running a statement (``peak[2]``) and waiting on a lock in it (``peak[3]``)."""
    if not watch:
        return
    with psycopg.connect(watch, autocommit=True) as conn:
        while not done.is_set():
            sessions, locks, publishing, waiting = _session_counts(conn)
            peak[0], peak[1] = max(peak[0], sessions), max(peak[1], locks)
            peak[2] += publishing
            peak[3] += waiting
            done.wait(0.05)


def _run_tasks(broker: str, backend: str, tasks: int, watch: str | None,
               server_pid: int | None = None) -> dict[str, Any]:
    """``tasks`` timed naps, published first to a queue no worker consumes; then every
    host is told to consume it at once (``add_consumer``). Returns tasks/s from the first
    start to the last end, the peak sessions and lock waits, and p50 of 20 lone round
    trips (publish -> result, with the 100 ms sleep)."""
    client = Celery("cluster_bench", broker=broker, backend=backend, set_as_current=False)
    client.conf.task_default_queue = cluster_app.QUEUE
    peak = [0, 0, 0, 0]
    done = threading.Event()
    sampler = threading.Thread(target=_sample_peaks, args=(watch, peak, done), daemon=True)
    try:
        results = [client.send_task("tests.cluster.app.timed_nap", (NAP,), queue=BULK)
                   for _ in range(tasks)]
        sampler.start()
        cpu0, pg0 = _cpu(), _server_cpu(server_pid)
        client.control.add_consumer(BULK, reply=False)
        outcomes = [r.get(timeout=600) for r in results]
        cpu1, pg1 = _cpu(), _server_cpu(server_pid)
        client.control.cancel_consumer(BULK, reply=False)
        done.set()
        sampler.join()
        trips = []
        for _ in range(20):
            sent = time.time()
            client.send_task("tests.cluster.app.timed_nap", (NAP,)).get(timeout=60)
            trips.append(time.time() - sent)
    finally:
        done.set()
        client.close()
    wall = max(end for _, _, end in outcomes) - min(start for _, start, _ in outcomes)
    hosts = Counter(host for host, _, _ in outcomes)
    return {"rate": tasks / wall, "p50": statistics.median(trips),
            "cpu": (cpu1[0] - cpu0[0]) / max(cpu1[1] - cpu0[1], 1.0),
            "pg_cpu_per_task": (pg1 - pg0) / tasks * 1000,
            "sessions": peak[0], "lock_waits": peak[1], "hosts": len(hosts)}


def _run_live(broker: str, backend: str, tasks: int, watch: str | None,
              server_pid: int | None = None, workers: Sequence[int] = ()) -> dict[str, Any]:
    """The users' shape: every host already consumes the app's queue; the client publishes
    ``tasks`` timed naps one after another and then collects each result with ``get()``, in
    order, while the hosts work. tasks/s: tasks / (first publish -> last result collected);
    also the publish rate, the peak sessions and lock waits, the share of the client's
    publishing statements seen waiting on a lock, and the CPU ms per task of each role
    (``roles``: client, worker hosts, Redis, and PostgreSQL's processes by the role of
    their connection when ``watch`` is given)."""
    client = Celery("cluster_live", broker=broker, backend=backend, set_as_current=False)
    client.conf.task_default_queue = cluster_app.QUEUE
    peak = [0, 0, 0, 0]
    done = threading.Event()
    sampler = threading.Thread(target=_sample_peaks, args=(watch, peak, done), daemon=True)
    sampler.start()
    try:
        meter = CpuMeter(workers, server_pid)
        backends0 = backend_cpu(server_pid)
        cpu0 = _cpu()
        first = time.time()
        results = [client.send_task("tests.cluster.app.timed_nap", (NAP,))
                   for _ in range(tasks)]
        published = time.time()
        outcomes = [r.get(timeout=600) for r in results]
        last = time.time()
        cpu1 = _cpu()
        spent, backends1 = meter.stop(), backend_cpu(server_pid)
    finally:
        done.set()
        sampler.join()
        client.close()
    hosts = Counter(host for host, _, _ in outcomes)
    roles = {"client": spent["client"],
             "worker hosts": spent["worker main"] + spent["pool children"],
             "redis-server": spent.get("redis-server", 0.0)}
    if watch:
        for pid, role in _backend_roles(watch).items():
            roles[f"PostgreSQL {role}"] = roles.get(f"PostgreSQL {role}", 0.0) + max(
                0.0, backends1.get(pid, 0.0) - backends0.get(pid, 0.0))
    roles["PostgreSQL"] = spent.get("PostgreSQL", 0.0)
    return {"rate": tasks / (last - first), "publish": tasks / max(published - first, 1e-9),
            "cpu": (cpu1[0] - cpu0[0]) / max(cpu1[1] - cpu0[1], 1.0),
            "pg_cpu_per_task": roles["PostgreSQL"] / tasks * 1000,
            "roles": {role: seconds / tasks * 1000 for role, seconds in roles.items()},
            "publish_lock_share": peak[3] / peak[2] if peak[2] else None,
            "sessions": peak[0], "lock_waits": peak[1], "hosts": len(hosts)}


def _dag() -> type:
    entries = []
    for layer in range(LAYERS):
        for i in range(WIDTH):
            deps = [] if layer == 0 else [f"s{layer - 1}_{i}", f"s{layer - 1}_{(i + 1) % WIDTH}"]
            entries.append((f"s{layer}_{i}", cluster_app.tick, {"depends_on": deps}))

    class Layered:
        __workflow_slug__ = "bench.cluster_2000"

        @staticmethod
        def __workflow_steps__() -> list[Any]:
            return entries

    return Layered


def _top_statements(url: str, limit: int = 6) -> list[tuple[str, int, float, float]]:
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT regexp_replace(left(query, 70), '\\s+', ' ', 'g'), calls, "
            "total_exec_time, mean_exec_time FROM pg_stat_statements "
            "ORDER BY total_exec_time DESC LIMIT %s", (limit,)).fetchall()
    return [(str(q), int(c), float(t), float(m)) for q, c, t, m in rows]


def _reset_statements(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        conn.execute("SELECT pg_stat_statements_reset()")


def _start_hosts(c: Cluster, count: int, env: dict[str, str]) -> None:
    for i in range(1, count + 1):
        c.start_worker(i, "tests.cluster.app", queues=[cluster_app.QUEUE],
                       concurrency=CONCURRENCY, env=env)


def _stop_hosts(c: Cluster) -> None:
    for i in list(c.workers):
        c.stop_worker(i)


def _metered(c: Cluster, shape: str) -> dict[str, Any]:
    """The live shape's extra argument: the worker hosts' processes, for its CPU meter."""
    return {"workers": [p.pid for p in c.workers.values()]} if shape == "live" else {}


def bench(host_counts: list[int], per_host: int, pgbouncer: bool = False,
          shapes: tuple[str, ...] = ("bulk", "live"), live_per_host: int = 400,
          dag: bool = True) -> str:
    """Run everything; return the Markdown section."""
    most = max(host_counts)
    lines: list[str] = []
    with contextlib.ExitStack() as stack:
        c = stack.enter_context(Cluster(most))
        url = c.server.url()
        migrate.migrate(url)
        db.resolve(url).close()
        worker_url = url
        if pgbouncer:
            from tests.cluster.pgbouncer import pgbouncer as run_pgbouncer

            worker_url = stack.enter_context(run_pgbouncer(url, listen_addr=BRIDGE_IP,
                                                           spawn=c.spawn))
        secret = c.server.password  # Redis refuses non-loopback clients without one
        c.spawn(["redis-server", "--bind", BRIDGE_IP, "--port", str(REDIS_PORT), "--save", "",
                 "--appendonly", "no", "--requirepass", secret])
        redis = f"redis://:{secret}@{BRIDGE_IP}:{REDIS_PORT}/0"
        rows: dict[int, dict[str, Any]] = {}
        statements: list[tuple[str, int, float, float]] = []
        live_statements: list[tuple[str, int, float, float]] = []
        swf_url = db.broker_url(url)
        pid = c.server.proc.pid if c.server.proc else None
        # shape -> (its run, tasks per host, the keys of its swf and Redis rows)
        runs = {"bulk": (_run_tasks, per_host, "ours", "redis"),
                "live": (_run_live, live_per_host, "ours_live", "redis_live")}
        for hosts in host_counts:
            row: dict[str, Any] = {}
            _start_hosts(c, hosts, {"SWF_CLUSTER_URL": worker_url})
            for shape in shapes:
                run, count, ours_key, _ = runs[shape]
                run(swf_url, swf_url, 16 * hosts, None)  # warm-up
                _reset_statements(url)
                row[ours_key] = run(swf_url, swf_url, count * hosts, url, pid,
                                    **_metered(c, shape))
                if hosts == most and shape == "live":
                    live_statements = _top_statements(url)
                elif hosts == most:
                    statements = _top_statements(url)
            _stop_hosts(c)
            _start_hosts(c, hosts, {"SWF_CLUSTER_REDIS": redis})
            for shape in shapes:
                run, count, _, redis_key = runs[shape]
                run(redis, redis, 16 * hosts, None)  # warm-up
                row[redis_key] = run(redis, redis, count * hosts, None, **_metered(c, shape))
            _stop_hosts(c)
            rows[hosts] = row
            print(f"{hosts} hosts: " + ", ".join(f"{k} {v['rate']:.0f}/s"
                                                 for k, v in row.items()), flush=True)
        dag_wall, dag_hosts = 0.0, 0
        if dag:
            _start_hosts(c, most, {"SWF_CLUSTER_URL": worker_url})
            from swf_celery.workflows.executor import Executor

            layered = _dag()
            Executor.execute(layered, {}, url, timeout=600_000)  # warm-up: plans, flows row
            start = time.time()
            Executor.execute(layered, {}, url, timeout=600_000)
            dag_wall = time.time() - start
            dag_hosts = _sessions(url)[0]
            _stop_hosts(c)
        max_conn = c.server.max_connections
    flag = " --pgbouncer" if pgbouncer else ""
    title = "through PgBouncer (transaction pooling)" if pgbouncer else "direct"
    lines += [
        f"## Worker hosts, {title} (`cluster_bench`)",
        "",
        f"`make cluster-bench` (`python -m benchmarks.cluster_bench{flag}`), "
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC on {machine()}. Hosts are "
        "network namespaces on one bridge (10.213.0.0/24) of this machine, each running "
        f"`celery -A tests.cluster.app worker --pool=threads -c {CONCURRENCY}`; one "
        f"private PostgreSQL (`max_connections = {max_conn}`) and one private Redis on the "
        "bridge. Tasks are `time.sleep("
        f"{NAP})`. Connections: the most worker-host sessions seen in `pg_stat_activity` "
        "during the run (through PgBouncer: its server connections). Analysis: "
        "[scale-out.md](scale-out.md).",
        "",
    ]
    if "live" in shapes:
        lines += [
            f"**Publishing while consuming (the users' shape).** Every host consumes the "
            f"app's queue from the start; one client publishes {live_per_host} tasks per host "
            "one after another, then collects each result with `get()` in order. tasks/s: "
            "tasks / (first publish -> last result collected); publish/s: the client's "
            "publishing rate.",
            "",
            *_table(rows, "ours_live", "redis_live", live=True),
            "",
            "Where the CPU goes, publishing while consuming: ms of CPU per task by process "
            "(`/proc`), PostgreSQL's processes by the role of their connection "
            "(`pg_stat_activity`); \"publish waits\": the share of 50 ms samples in which the "
            "client's publishing statement was waiting on a lock.",
            "",
            *_cpu_table(rows),
            "",
        ]
    if "bulk" in shapes:
        lines += [
            f"**A queue filled first.** {per_host} tasks per host published to a queue no "
            "worker consumes, then every host is told to consume it at once "
            "(`control.add_consumer`): tasks/s is tasks / (last end - first start). p50: 20 "
            "lone round trips on the idle cluster (publish -> `get()`, 100 ms sleep "
            "included).",
            "",
            *_table(rows, "ours", "redis", live=False),
            "",
        ]
    if dag:
        lines += [
            f"2000-step DAG ({LAYERS} layers x {WIDTH}, each step depending on 2 of the layer "
            f"before) across {most} hosts: {dag_wall:.1f} s, {2000 / dag_wall:.0f} steps/s "
            f"({dag_hosts} worker-host sessions at the end).",
        ]
    for label, found in (("publishing while consuming", live_statements),
                         ("a queue filled first", statements)):
        if found:
            lines += ["", f"Top statements by total time at {most} hosts, {label} "
                      "(`pg_stat_statements`):", "",
                      "| statement | calls | total ms | mean ms |", "|---|---|---|---|"]
            lines += [f"| `{q.replace('|', '/')}` | {n} | {t:.0f} | {m:.3f} |"
                      for q, n, t, m in found]
    return "\n".join(lines) + "\n"


def _table(rows: dict[int, dict[str, Any]], ours_key: str, redis_key: str, *,
           live: bool) -> list[str]:
    """One shape's Markdown table: swf beside Redis for each host count."""
    base = rows[min(rows)]
    middle = "publish/s" if live else "p50 (s)"
    out = [f"| hosts | swf tasks/s | {middle} | connections | lock waits (peak) | machine CPU "
           f"busy | PG CPU ms/task | Redis tasks/s | Redis {middle} | Redis CPU busy | swf / "
           "Redis | scaling vs 1 host (swf, Redis) |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for hosts, row in rows.items():
        o, r = row[ours_key], row[redis_key]
        mid_o = f"{o['publish']:.0f}" if live else f"{o['p50']:.2f}"
        mid_r = f"{r['publish']:.0f}" if live else f"{r['p50']:.2f}"
        out.append(
            f"| {hosts} | {o['rate']:.0f} | {mid_o} | {o['sessions']} | "
            f"{o['lock_waits']} | {o['cpu']:.0%} | {o['pg_cpu_per_task']:.2f} | "
            f"{r['rate']:.0f} | {mid_r} | {r['cpu']:.0%} | "
            f"{o['rate'] / r['rate']:.2f} | {o['rate'] / base[ours_key]['rate']:.2f}x, "
            f"{r['rate'] / base[redis_key]['rate']:.2f}x |")
    return out


#: PostgreSQL's roles the CPU table shows on their own (the rest is summed as "other").
_PG_ROLES = ("workers: swf-broker", "workers: swf-listen", "workers: swf-results",
             "client: swf-broker", "client: swf-listen")


def _cpu_table(rows: dict[int, dict[str, Any]]) -> list[str]:
    """CPU ms per task by role in the live shape, swf beside Redis for each host count."""
    out = ["| hosts | broker | total | client | worker hosts | server | "
           + " | ".join(f"PG {r}" for r in _PG_ROLES) + " | PG other | publish waits |",
           "|---|---|---|---|---|---|" + "---|" * (len(_PG_ROLES) + 2)]
    for hosts, row in rows.items():
        for label, key, server in (("swf", "ours_live", "PostgreSQL"),
                                   ("Redis", "redis_live", "redis-server")):
            roles = row[key]["roles"]
            total = roles["client"] + roles["worker hosts"] + roles[server]
            cells = [f"{hosts}", label, f"{total:.2f}", f"{roles['client']:.2f}",
                     f"{roles['worker hosts']:.2f}", f"{roles[server]:.2f}"]
            if label == "swf":
                shown = [roles.get(f"PostgreSQL {r}", 0.0) for r in _PG_ROLES]
                share = row[key]["publish_lock_share"]
                cells += [f"{v:.2f}" for v in shown]
                cells += [f"{roles[server] - sum(shown):.2f}",
                          "-" if share is None else f"{share:.0%}"]
            else:
                cells += ["-"] * (len(_PG_ROLES) + 2)
            out.append("| " + " | ".join(cells) + " |")
    return out


def write_section(name: str, text: str) -> None:
    """Put ``text`` into docs/benchmarks.md as section ``name`` (replacing an older one)."""
    doc = DOC.read_text() if DOC.exists() else "# Benchmarks\n\n"
    block = f"<!-- section: {name} -->\n{text.rstrip()}\n<!-- /section -->\n"
    pattern = re.compile(rf"<!-- section: {name} -->\n.*?<!-- /section -->\n", re.S)
    doc = pattern.sub(lambda _m: block, doc) if pattern.search(doc) else doc + "\n" + block
    DOC.write_text(doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", default="1,2,4")
    parser.add_argument("--tasks-per-host", type=int, default=320)
    parser.add_argument("--pgbouncer", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--shapes", default="live,bulk",
                        help="live (publishing while consuming), bulk (a queue filled first)")
    parser.add_argument("--live-tasks-per-host", type=int, default=400)
    parser.add_argument("--no-dag", action="store_true", help="skip the 2000-step DAG")
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason:
        raise SystemExit(f"cluster-bench: {reason}")
    text = bench([int(h) for h in args.hosts.split(",")], args.tasks_per_host, args.pgbouncer,
                 tuple(args.shapes.split(",")), args.live_tasks_per_host, not args.no_dag)
    print(text)
    if not args.no_write:
        write_section("bench_cluster_pgbouncer" if args.pgbouncer else "bench_cluster", text)


if __name__ == "__main__":
    main()
