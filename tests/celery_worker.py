"""Start real ``celery worker`` subprocesses for tests and benchmarks.

``worker_process("tests.apps.noop", queues=["gpu_workers"], env={...})`` starts
``python -m celery -A <module> worker`` with the given options, waits until the worker
logs that it is ready, yields the :class:`subprocess.Popen`, and stops it (TERM, then
KILL) afterwards. The log is kept in a file; :func:`read_log` returns it for assertions
and failure messages.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def read_log(proc: subprocess.Popen[bytes]) -> str:
    """The worker's combined stdout/stderr so far."""
    path = getattr(proc, "log_path", None)
    return Path(path).read_text(errors="replace") if path else ""


@contextlib.contextmanager
def worker_process(
    app: str,
    *,
    queues: Sequence[str] | None = None,
    env: dict[str, str] | None = None,
    concurrency: int = 2,
    pool: str = "prefork",
    hostname: str | None = None,
    extra_args: Sequence[str] = (),
    ready_timeout: float = 60.0,
    loglevel: str = "INFO",
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``celery -A app worker`` until the block ends; yield the process."""
    args = [sys.executable, "-m", "celery", "-A", app, "worker", f"--pool={pool}",
            f"--concurrency={concurrency}", f"--loglevel={loglevel}", "--without-mingle",
            "--without-gossip"]
    if queues:
        args += ["-Q", ",".join(queues)]
    if hostname:
        args += ["-n", hostname]
    args += list(extra_args)
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT)] + ([full_env["PYTHONPATH"]] if full_env.get("PYTHONPATH") else []))
    full_env.update(env or {})
    log = tempfile.NamedTemporaryFile(prefix="celery-worker-", suffix=".log", delete=False)
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                            cwd=str(ROOT), start_new_session=True)
    proc.log_path = log.name  # type: ignore[attr-defined]
    try:
        deadline = time.monotonic() + ready_timeout
        while " ready." not in read_log(proc):
            if proc.poll() is not None:
                raise RuntimeError(f"celery worker exited ({proc.returncode}):\n{read_log(proc)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"celery worker not ready in {ready_timeout}s:\n"
                                   f"{read_log(proc)[-4000:]}")
            time.sleep(0.1)
        yield proc
    finally:
        stop_worker(proc)
        log.close()


def stop_worker(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """TERM the worker (main process only), then KILL its process group if it lingers.

    TERM to the whole group would also hit idle prefork children, which may die holding
    billiard's queue lock and leave the parent hanging at exit.
    """
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def kill_worker(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker and all its children at once (a crash, not a shutdown)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
