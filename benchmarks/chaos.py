"""`make chaos`: a mixed workload under seeded faults, counting what was lost.

``python -m benchmarks.chaos --minutes N --seed S [--workers 3] [--write-docs]``

For N minutes a driver publishes plain tasks (late acks), tasks that retry, chains, chords,
ETA/countdown tasks, tasks revoked before their ETA, workflow runs with a map step (some
paused and resumed, some cancelled, some with a step that fails its first attempt) and
channel messages, to ``--workers`` ``celery worker`` processes
(:mod:`benchmarks.chaos_app`) on a private embedded PostgreSQL of its own. Meanwhile a
scheduler seeded with S injects faults, overlapping:

- ``kill_one`` / ``kill_all``: SIGKILL of one worker's process group / of every worker;
- ``term_one`` / ``term_all``: SIGTERM (warm shutdown) of one / every worker;
- ``pg_restart``: PostgreSQL's fast restart; ``pg_stop``: a fast shutdown, 5 s down;
- ``pg_crash``: an immediate shutdown (SIGQUIT to the postmaster: crash recovery);
- ``freeze``: one worker's processes stopped (SIGSTOP) for 20 s, then continued: a host cut
  off (its sessions silent, its held messages' visibility lapsing) and back;
- ``idle_txn``: a transaction left idle for a minute (holding back vacuum);
- ``stalled_listener``: a session that LISTENs on the library's channels and stops reading
  for a minute.

Then it stops publishing and faults, restarts every worker, and waits for the work to drain.
The report counts tasks published (acknowledged by the broker) / executed / lost / run twice
(by effect ids), runs completed / failed / cancelled / stranded, chords fired once, revoked
tasks that ran, messages sent / pending, the queue and state tables' sizes and dead rows at
start and end (after a VACUUM), ``pg_notification_queue_usage()``'s maximum, each fault's
count, and ``swf.doctor``'s verdict at the end. Any loss, stranding, unfired chord, revoked
task that ran, or dead rows a VACUUM cannot remove (unbounded growth) makes it exit 1.

Left out: a disk-full moment (no safe way here: the server's WAL shares the machine's disk
with other sessions' work, and a loop device or a small tablespace needs mounts this machine
does not allow us to make safely) and the network-namespace cut of
``tests/cluster/hosts.py`` (its cleanup is machine-wide: it ends the processes any earlier
run recorded, unsafe while other sessions run cluster tests); ``freeze`` stands in for it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from tests.helpers import free_port

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
BEGIN, END = "<!-- chaos:begin -->", "<!-- chaos:end -->"
QUEUES = ["chaos", "chaos_steps"]
FAULTS = {"kill_one": 4, "kill_all": 1, "term_one": 3, "term_all": 1, "pg_restart": 2,
          "pg_stop": 1, "pg_crash": 1, "freeze": 2, "idle_txn": 1, "stalled_listener": 1}
VT = 10.0


def _cli(env: dict[str, str], *args: str, check: bool = True) -> str:
    proc = subprocess.run([sys.executable, "-m", "swf_celery.cli", *args], env=env,
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    if check and proc.returncode != 0:
        raise RuntimeError(f"swf-celery {' '.join(args)}: {proc.stderr.strip()[-500:]}")
    return proc.stdout.strip()


class Server:
    """The run's private embedded PostgreSQL (``swf-celery db`` with a home of its own)."""

    def __init__(self, home: Path, port: int) -> None:
        self.env = dict(os.environ, SWF_HOME=str(home), SWF_EMBEDDED_PORT=str(port))
        self.env.pop("SWF_DATABASE_URL", None)
        self.url = ""

    def start(self) -> None:
        _cli(self.env, "db", "start")
        self.url = _cli(self.env, "db", "url")

    def restart(self) -> None:
        _cli(self.env, "db", "restart")

    def stop(self) -> None:
        _cli(self.env, "db", "stop")

    def crash(self) -> None:
        """Immediate shutdown of the postmaster (SIGQUIT), then start again."""
        status = json.loads(_cli(self.env, "db", "status", "--json"))
        pid = status.get("pid")
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGQUIT)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    os.kill(int(pid), 0)
                except ProcessLookupError:
                    break
                time.sleep(0.2)
        _cli(self.env, "db", "start")

    def remove(self) -> None:
        _cli(self.env, "db", "remove", check=False)


class Worker:
    """One restartable ``celery -A benchmarks.chaos_app worker`` process group."""

    def __init__(self, index: int, url: str, logs: Path) -> None:
        self.index, self.url, self.logs = index, url, logs
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        self.starts += 1
        log = open(self.logs / f"worker{self.index}.log", "ab")  # noqa: SIM115 - its log
        env = dict(os.environ, SWF_DATABASE_URL=self.url, CHAOS_VT=str(VT),
                   PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "benchmarks.chaos_app", "worker",
             "--pool=prefork", "--concurrency=2", "--loglevel=INFO", "--without-mingle",
             "--without-gossip", "-Q", ",".join(QUEUES), "-n", f"chaos{self.index}@%h"],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)

    def send(self, sig: int) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.proc is None:
            return
        self.send(signal.SIGCONT)
        self.send(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.send(signal.SIGKILL)
            self.proc.wait(10)
        self.send(signal.SIGKILL)  # children left behind


@dataclass
class Tally:
    """What the driver published (acknowledged by the broker) and expects."""

    effects: set[str] = field(default_factory=set)      # keys that must be recorded
    revoked: set[str] = field(default_factory=set)      # keys that must not be
    chords: set[str] = field(default_factory=set)       # chord callback keys
    runs: dict[str, str] = field(default_factory=dict)  # run id -> expected end
    messages: list[int] = field(default_factory=list)   # channel message ids
    refused: Counter[str] = field(default_factory=Counter)  # publishes that raised
    kinds: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Chaos:
    """One run: server, workers, driver, faults, drain, report."""

    def __init__(self, minutes: float, seed: int, workers: int) -> None:
        self.minutes, self.seed = minutes, seed
        self.rng = random.Random(seed)
        self.fault_rng = random.Random(seed * 7919 + 1)
        self.home = Path(tempfile.mkdtemp(prefix="swf-chaos-"))
        self.logs = Path(tempfile.mkdtemp(prefix="swf-chaos-logs-"))
        os.chmod(self.home, 0o755)  # the server's unprivileged user traverses it (as root)
        self.server = Server(self.home / "pg", free_port())
        self.n_workers = workers
        self.workers: list[Worker] = []
        self.tally = Tally()
        self.faults: Counter[str] = Counter()
        self.lifecycle: Counter[str] = Counter()  # pauses, resumes, cancels that took
        self.stop_faults = threading.Event()
        self.stop_driver = threading.Event()
        self.notify_max = 0.0
        self.errors: list[str] = []
        self.app: Any = None

    # -- setup and teardown ----------------------------------------------------------

    def setup(self) -> None:
        from swf_celery.ops import migrate

        self.server.start()
        os.environ["SWF_DATABASE_URL"] = self.server.url  # before chaos_app is imported
        migrate.migrate(self.server.url)
        with psycopg.connect(self.server.url, autocommit=True) as conn:
            from benchmarks.chaos_app import EFFECTS_TABLE

            conn.execute(EFFECTS_TABLE)
        from benchmarks import chaos_app

        self.app = chaos_app.app
        for i in range(self.n_workers):
            worker = Worker(i, self.server.url, self.logs)
            worker.start()
            self.workers.append(worker)
        deadline = time.monotonic() + 60
        while not all(" ready." in self._log(w) for w in self.workers):
            if time.monotonic() > deadline:
                raise RuntimeError("workers not ready:\n" + self._log(self.workers[0])[-2000:])
            time.sleep(0.2)

    def _log(self, worker: Worker) -> str:
        path = self.logs / f"worker{worker.index}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def teardown(self, keep_logs: bool) -> None:
        """Stop the workers, remove the server; the workers' logs stay when ``keep_logs``."""
        for worker in self.workers:
            worker.stop()
        self.server.remove()
        shutil.rmtree(self.home, ignore_errors=True)
        if not keep_logs:
            shutil.rmtree(self.logs, ignore_errors=True)

    # -- the workload ----------------------------------------------------------------

    def drive(self) -> None:
        """Publish a mixed workload until told to stop (about 8 operations a second)."""
        from celery import chain, chord, group

        import swf_celery as swf
        from benchmarks import chaos_app

        n = 0
        ops = ["task"] * 6 + ["flaky"] * 2 + ["chain", "chord", "eta", "revoke", "run",
                                                "message"]
        while not self.stop_driver.is_set():
            n += 1
            kind = self.rng.choice(ops)
            key = f"{kind}:{n}"
            try:
                if kind == "task":
                    chaos_app.effect.delay(key)
                    self._expect(kind, key)
                elif kind == "flaky":
                    chaos_app.flaky.delay(key)
                    self._expect(kind, key)
                elif kind == "chain":
                    chain(chaos_app.effect.si(key + "a"), chaos_app.effect.si(key + "b"),
                          chaos_app.effect.si(key + "c")).delay()
                    self._expect(kind, key + "a", key + "b", key + "c")
                elif kind == "chord":
                    parts = [chaos_app.effect.si(f"{key}.{i}") for i in range(4)]
                    chord(group(parts), chaos_app.chord_done.s(key + "!")).delay()
                    self._expect(kind, *(f"{key}.{i}" for i in range(4)))
                    with self.tally.lock:
                        self.tally.chords.add(key + "!")
                elif kind == "eta":
                    chaos_app.effect.apply_async((key,), countdown=self.rng.uniform(1, 45))
                    self._expect(kind, key)
                elif kind == "revoke":
                    result = chaos_app.effect.apply_async((key,), countdown=20)
                    with self.tally.lock:
                        self.tally.revoked.add(key)
                        self.tally.kinds[kind] += 1
                    self.app.control.revoke(result.id)
                elif kind == "run":
                    self._start_run(swf, n)
                else:
                    message_id = swf.send_with_notify("chaos", {"n": n}, self.server.url)
                    with self.tally.lock:
                        self.tally.messages.append(message_id)
                        self.tally.kinds[kind] += 1
            except Exception as exc:  # noqa: BLE001 - a publish refused during a fault
                with self.tally.lock:
                    self.tally.refused[kind] += 1
                    if kind == "revoke":
                        # published but its revoke may not have gone out: not counted
                        self.tally.revoked.discard(key)
                self._note(f"{kind} refused: {type(exc).__name__}: {str(exc)[:120]}")
                time.sleep(0.5)
            time.sleep(self.rng.uniform(0.05, 0.2))

    def _start_run(self, swf: Any, n: int) -> None:
        from benchmarks.chaos_app import ChaosFlow

        roll = self.rng.random()
        run_input = {"items": self.rng.randint(2, 6), "tag": str(n), "wobbly": roll < 0.3}
        run_id = swf.Executor.start(ChaosFlow, run_input, self.server.url)
        expected = "completed"
        if roll > 0.9:
            expected = "cancelled"
            threading.Timer(self.rng.uniform(0.1, 1), self._lifecycle,
                            ("cancel", run_id)).start()
        elif roll > 0.75:
            threading.Timer(self.rng.uniform(0.1, 1), self._lifecycle, ("pause", run_id)).start()
        with self.tally.lock:
            self.tally.runs[run_id] = expected
            self.tally.kinds["run"] += 1

    def _lifecycle(self, action: str, run_id: str) -> None:
        import swf_celery as swf
        from swf_celery.errors import RunStateError

        last: Exception | None = None
        for _ in range(30):  # through faults: until the database answers
            try:
                if action == "cancel":
                    swf.cancel_workflow_run(run_id, self.server.url, reason="chaos")
                elif action == "pause":
                    swf.pause_workflow_run(run_id, self.server.url)
                    self.lifecycle["paused"] += 1
                    time.sleep(self.rng.uniform(1, 4))
                    action = "resume"
                    continue
                else:
                    swf.resume_workflow_run(run_id, self.server.url)
                self.lifecycle[action + ("d" if action.endswith("e") else "led")] += 1
                return
            except RunStateError:
                if action == "cancel":
                    with self.tally.lock:  # it finished first: it ends completed after all
                        self.tally.runs[run_id] = "completed"
                return  # the run ended first: nothing to pause, resume or cancel
            except Exception as exc:  # noqa: BLE001 - retried: the run must not stay paused
                last = exc
                time.sleep(1)
        self._note(f"{action} of {run_id} never went through: {last}")

    def _expect(self, kind: str, *keys: str) -> None:
        with self.tally.lock:
            self.tally.effects.update(keys)
            self.tally.kinds[kind] += 1

    def _note(self, text: str) -> None:
        if len(self.errors) < 200:
            self.errors.append(text)

    # -- faults ----------------------------------------------------------------------

    def inject(self) -> None:
        """Pick a fault every 8-20 s (seeded) until told to stop; long ones overlap."""
        names = list(FAULTS)
        weights = [FAULTS[n] for n in names]
        while not self.stop_faults.wait(self.fault_rng.uniform(8, 20)):
            name = self.fault_rng.choices(names, weights)[0]
            self.faults[name] += 1
            try:
                getattr(self, f"_fault_{name}")()
            except Exception as exc:  # noqa: BLE001 - a fault that failed is reported
                self._note(f"fault {name} failed: {exc}")

    def _pick(self) -> Worker:
        return self.workers[self.fault_rng.randrange(len(self.workers))]

    def _restart(self, workers: list[Worker], sig: int) -> None:
        for worker in workers:
            worker.stop(sig, timeout=30)
        time.sleep(self.fault_rng.uniform(0.5, 3))
        for worker in workers:
            worker.start()

    def _fault_kill_one(self) -> None:
        self._restart([self._pick()], signal.SIGKILL)

    def _fault_kill_all(self) -> None:
        self._restart(self.workers, signal.SIGKILL)

    def _fault_term_one(self) -> None:
        self._restart([self._pick()], signal.SIGTERM)

    def _fault_term_all(self) -> None:
        self._restart(self.workers, signal.SIGTERM)

    def _fault_pg_restart(self) -> None:
        self.server.restart()

    def _fault_pg_stop(self) -> None:
        self.server.stop()
        time.sleep(5)
        self.server.start()

    def _fault_pg_crash(self) -> None:
        self.server.crash()

    def _fault_freeze(self) -> None:
        worker = self._pick()
        worker.send(signal.SIGSTOP)
        threading.Timer(20, worker.send, (signal.SIGCONT,)).start()

    def _hold(self, statements: list[str]) -> None:
        def hold() -> None:
            try:
                with psycopg.connect(self.server.url, autocommit=True,
                                     application_name="chaos-fault") as conn:
                    for statement in statements:
                        conn.execute(statement.encode())
                    self.stop_faults.wait(60)
                    with contextlib.suppress(psycopg.Error):
                        conn.execute("ROLLBACK")
            except psycopg.Error:
                pass  # the server restarted meanwhile: the fault ended with it

        threading.Thread(target=hold, daemon=True).start()

    def _fault_idle_txn(self) -> None:
        self._hold(["BEGIN", "SELECT txid_current()"])

    def _fault_stalled_listener(self) -> None:
        self._hold(['LISTEN "swf:workflow_events"', 'LISTEN swf_results', "BEGIN",
                    "SELECT 1"])

    # -- measurements ----------------------------------------------------------------

    def sample(self) -> None:
        while not self.stop_driver.is_set():
            with contextlib.suppress(psycopg.Error):
                with psycopg.connect(self.server.url, autocommit=True,
                                     connect_timeout=3) as conn:
                    while not self.stop_driver.wait(1.0):
                        usage = conn.execute(
                            "SELECT pg_notification_queue_usage()").fetchone()[0]  # type: ignore[index]
                        self.notify_max = max(self.notify_max, float(usage))
            self.stop_driver.wait(1.0)

    def tables(self, vacuum: bool = False) -> dict[str, tuple[int, int, int]]:
        """(bytes, live, dead) of the swf and pgmq tables (after a VACUUM when asked)."""
        with psycopg.connect(self.server.url, autocommit=True) as conn:
            names = [r[0] for r in conn.execute(
                "SELECT format('%I.%I', schemaname, relname) FROM pg_stat_all_tables "
                "WHERE schemaname IN ('swf', 'pgmq') ORDER BY 1")]
            if vacuum:
                for name in names:
                    conn.execute(f"VACUUM {name}".encode())  # names from the catalog, quoted
                conn.execute("SELECT pg_stat_force_next_flush()"
                             if conn.info.server_version >= 150000 else "SELECT 1")
                time.sleep(1.5)
            return {name: (int(b), int(live), int(dead)) for name, b, live, dead in conn.execute(
                "SELECT format('%I.%I', schemaname, relname), pg_total_relation_size(relid), "
                "n_live_tup, n_dead_tup FROM pg_stat_all_tables "
                "WHERE schemaname IN ('swf', 'pgmq')")}

    # -- the run ---------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        self.setup()
        before = self.tables()
        threads = [threading.Thread(target=self.drive, daemon=True),
                   threading.Thread(target=self.inject, daemon=True),
                   threading.Thread(target=self.sample, daemon=True)]
        for thread in threads:
            thread.start()
        time.sleep(self.minutes * 60)
        self.stop_faults.set()
        self.stop_driver.set()
        for thread in threads:
            thread.join(120)
        time.sleep(1)
        for worker in self.workers:  # every worker up again (and continued)
            worker.send(signal.SIGCONT)
            if not worker.alive:
                worker.start()
        drained = self.drain(timeout=240)
        after = self.tables(vacuum=True)
        report = self.report(before, after, drained, time.monotonic() - started)
        return report

    def _state(self) -> dict[str, Any]:
        with psycopg.connect(self.server.url, autocommit=True) as conn:
            effects = dict(conn.execute("SELECT key, runs FROM chaos_effects").fetchall())
            runs = dict(conn.execute("SELECT id::text, status FROM swf.runs").fetchall())
            dead = [_task_key(m) for (m,) in conn.execute(
                "SELECT message FROM swf.dead_letters")]
        return {"effects": effects, "runs": runs, "dead": {k for k in dead if k}}

    def drain(self, timeout: float) -> bool:
        """Wait until every expected effect is recorded and every run has ended."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                state = self._state()
            except psycopg.Error:
                time.sleep(1)
                continue
            missing = self.tally.effects - set(state["effects"]) - state["dead"]
            chords = self.tally.chords - set(state["effects"])
            active = [r for r in self.tally.runs if state["runs"].get(r) in
                      (None, "in_progress", "paused")]
            if not missing and not chords and not active:
                return True
            time.sleep(2)
        return False

    def report(self, before: dict[str, tuple[int, int, int]],
               after: dict[str, tuple[int, int, int]], drained: bool,
               elapsed: float) -> dict[str, Any]:
        import swf_celery as swf

        state = self._state()
        effects: dict[str, int] = state["effects"]
        runs: dict[str, str] = state["runs"]
        expected = self.tally.effects
        dead = sorted((expected | self.tally.chords) & state["dead"] - set(effects))
        lost = sorted(expected - set(effects) - state["dead"])
        twice = sorted(k for k in expected if effects.get(k, 0) > 1)
        chords_fired = sum(1 for k in self.tally.chords if effects.get(k, 0) >= 1)
        chords_twice = sum(1 for k in self.tally.chords if effects.get(k, 0) > 1)
        revoked_ran = sorted(k for k in self.tally.revoked if k in effects)
        ends = Counter(runs.get(r, "missing") for r in self.tally.runs)
        stranded = [r for r in self.tally.runs if runs.get(r) in (None, "in_progress",
                                                                  "paused")]
        unexpected_failed = [r for r, want in self.tally.runs.items()
                             if want == "completed" and runs.get(r) == "failed"]
        pending = {m.id for m in _all_pending(swf, self.server.url)}
        lost_messages = [m for m in self.tally.messages if m not in pending]
        doctor = swf.doctor(self.server.url)
        dead_after = {t: v[2] for t, v in after.items() if v[2] > 1000}
        total = (sum(v[0] for v in before.values()), sum(v[0] for v in after.values()))
        result = {
            "seed": self.seed, "minutes": self.minutes, "workers": self.n_workers,
            "elapsed_s": round(elapsed), "load": [round(x, 2) for x in os.getloadavg()],
            "published": dict(self.tally.kinds), "refused": dict(self.tally.refused),
            "tasks": {"expected": len(expected),
                      "executed": len(expected & set(effects)),
                      "dead_lettered": len(dead), "lost": len(lost), "run_twice": len(twice)},
            "chords": {"published": len(self.tally.chords), "fired": chords_fired,
                       "fired_twice": chords_twice},
            "revoked": {"published": len(self.tally.revoked), "ran": len(revoked_ran)},
            "runs": {"started": len(self.tally.runs), **dict(ends),
                     "stranded": len(stranded), "failed_unexpectedly": len(unexpected_failed)},
            "messages": {"sent": len(self.tally.messages), "lost": len(lost_messages)},
            "lifecycle": dict(self.lifecycle),
            "faults": dict(self.faults), "notify_queue_max": self.notify_max,
            "tables_bytes": {"start": total[0], "end": total[1]},
            "dead_rows_after_vacuum": dead_after,
            "doctor": {"severity": doctor.severity,
                       "findings": [f"{f.severity}: {f.summary}" for f in doctor.findings
                                    if f.rank >= 2]},
            "drained": drained,
            "examples": {"lost": lost[:10], "dead_lettered": dead[:10], "stranded": stranded[:5],
                         "revoked_ran": revoked_ran[:10], "failed": unexpected_failed[:5],
                         "failed_why": _failed_run_details(self.server.url,
                                                           unexpected_failed[:5])},
            "notes": self.errors[:20],
        }
        result["ok"] = (drained and len(expected) > 0 and len(self.tally.runs) > 0
                        and not lost and not stranded and not revoked_ran
                        and chords_fired == len(self.tally.chords) and not lost_messages
                        and not dead_after)
        return result


def _all_pending(swf: Any, url: str) -> list[Any]:
    out: list[Any] = []
    after = 0
    while True:
        page = swf.read_pending("chaos", url, after_id=after, limit=1000)
        if not page:
            return out
        out.extend(page)
        after = page[-1].id


def _task_key(message: dict[str, Any]) -> str | None:
    """The effect key a dead-lettered chaos task carried (its first argument)."""
    import base64

    try:
        args = json.loads(base64.b64decode(message["body"]))[0]
        return str(args[0]) if args and isinstance(args[0], str) else None
    except (KeyError, ValueError, TypeError, IndexError):
        return None




def render(report: dict[str, Any]) -> str:
    """The report as markdown (for the terminal and docs/reliability.md)."""
    t, r, c = report["tasks"], report["runs"], report["chords"]
    lines = [
        f"**{'PASS' if report['ok'] else 'FAIL'}**: seed {report['seed']}, "
        f"{report['minutes']:g} min, {report['workers']} workers, {report['elapsed_s']} s in "
        f"all; load average {report['load']} (the machine is shared with other sessions).",
        "",
        "| what | count |", "|---|---|",
        f"| tasks expected (broker acknowledged) | {t['expected']} |",
        f"| executed | {t['executed']} |",
        f"| dead-lettered (kept in swf.dead_letters: requeueable) | {t['dead_lettered']} |",
        f"| lost | {t['lost']} |",
        f"| run twice (at-least-once redeliveries) | {t['run_twice']} |",
        f"| chords published / fired / fired twice | {c['published']} / {c['fired']} / "
        f"{c['fired_twice']} |",
        f"| revoked before their ETA / ran anyway | {report['revoked']['published']} / "
        f"{report['revoked']['ran']} |",
        f"| runs started / completed / failed / cancelled / stranded | {r['started']} / "
        f"{r.get('completed', 0)} / {r.get('failed', 0)} / {r.get('cancelled', 0)} / "
        f"{r['stranded']} |",
        f"| channel messages sent / lost | {report['messages']['sent']} / "
        f"{report['messages']['lost']} |",
        f"| publishes refused during faults | {sum(report['refused'].values())} |",
        f"| pauses / resumes / cancels done while runs ran | "
        f"{report['lifecycle'].get('paused', 0)} / {report['lifecycle'].get('resumed', 0)} / "
        f"{report['lifecycle'].get('cancelled', 0)} |",
        f"| pg_notification_queue_usage() max | {report['notify_queue_max']:.6f} |",
        f"| swf + pgmq tables, bytes at start / end | {report['tables_bytes']['start']} / "
        f"{report['tables_bytes']['end']} |",
        f"| tables with dead rows a VACUUM left (>1000) | "
        f"{len(report['dead_rows_after_vacuum'])} |",
        f"| doctor at the end | {report['doctor']['severity']} |",
        "", "Faults: " + ", ".join(f"{k} {v}" for k, v in sorted(report["faults"].items())),
        "", "Published: " + ", ".join(f"{k} {v}" for k, v in sorted(report["published"].items())),
    ]
    return "\n".join(lines)


def write_docs(text: str) -> None:
    doc = DOC.read_text() if DOC.exists() else f"# Reliability\n\n{BEGIN}\n{END}\n"
    head, _, rest = doc.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOC.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def _failed_run_details(url: str, run_ids: list[str]) -> dict[str, Any]:
    """Each failed run's error, failed step and its steps' attempts (for the report)."""
    if not run_ids:
        return {}
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT r.id::text, r.error, r.failed_step, (SELECT json_agg(json_build_object("
            "'step', t.step_name, 'task', t.task_index, 'attempt', t.attempt, 'status', "
            "t.status, 'error', left(t.error, 300))) FROM swf.step_tasks t "
            "WHERE t.run_id = r.id AND t.status <> 'completed') FROM swf.runs r "
            "WHERE r.id = ANY(%s::uuid[])", (run_ids,)).fetchall()
    return {run_id: {"error": error, "failed_step": step, "steps": steps}
            for run_id, error, step, steps in rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__
                                     .split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--json", dest="json_path", default=None, help="Write the report here.")
    parser.add_argument("--write-docs", action="store_true",
                        help="Put the report in docs/reliability.md (between its markers).")
    args = parser.parse_args(argv)
    chaos = Chaos(args.minutes, args.seed, args.workers)
    report: dict[str, Any] = {"ok": False}
    try:
        report = chaos.run()
    finally:
        chaos.teardown(keep_logs=not report["ok"])
    if not report["ok"]:
        print(f"workers' logs kept in {chaos.logs}", file=sys.stderr)
    text = render(report)
    print(text)
    print(json.dumps({k: report[k] for k in ("examples", "notes", "doctor")}, indent=1,
                     default=str))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(report, indent=1, default=str))
    if args.write_docs:
        write_docs(text)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
