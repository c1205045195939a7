"""Start a real ``celery worker`` subprocess and wait until it is ready.

``make demo``, the runnable examples and the tests start workers the way a user does
(``python -m celery -A app worker -Q queue``), so what they show is what production runs:

```python
with worker_process("examples.gpu_pipeline.app", queues=["gpu_workers"]) as proc:
    ...  # the worker consumes until the block ends, then gets a warm shutdown (TERM)
```

The worker's stdout/stderr go to a log file (:func:`read_log`), so a chatty worker never
blocks on a full pipe and a failure can show what the worker said.
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

from swf_celery.errors import WorkerStartError


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
    cwd: str | Path | None = None,
    stop_timeout: float = 15.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``celery -A app worker`` until the block ends; yield the process.

    ``cwd`` (default: the current directory) is where the worker runs and is put first on
    its ``PYTHONPATH``, so ``app`` may be a module of the project there. On exit the worker
    gets TERM (Celery's warm shutdown: running tasks finish) and KILL after
    ``stop_timeout`` seconds.
    """
    where = Path(cwd or os.getcwd()).resolve()
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
        [str(where)] + ([full_env["PYTHONPATH"]] if full_env.get("PYTHONPATH") else []))
    full_env.update(env or {})
    log = tempfile.NamedTemporaryFile(prefix="celery-worker-", suffix=".log", delete=False)
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                            cwd=str(where), start_new_session=True)
    proc.log_path = log.name  # type: ignore[attr-defined]
    try:
        deadline = time.monotonic() + ready_timeout
        while " ready." not in read_log(proc):
            if proc.poll() is not None:
                raise WorkerStartError(
                    f"celery worker exited ({proc.returncode}):\n{read_log(proc)}")
            if time.monotonic() > deadline:
                raise WorkerStartError(f"celery worker not ready in {ready_timeout}s:\n"
                                       f"{read_log(proc)[-4000:]}")
            time.sleep(0.1)
        yield proc
    finally:
        stop_worker(proc, stop_timeout)
        log.close()


def stop_worker(proc: subprocess.Popen[bytes], timeout: float = 15.0, *,
                whole_group: bool = True) -> None:
    """TERM the worker (warm shutdown), then KILL its process group if it lingers.

    By default TERM goes to the whole process group at once, as systemd stops a service
    (``KillMode=control-group``): the main process and its pool children together.
    ``whole_group=False`` signals only the main process, as ``kill PID`` does.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if whole_group:
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    # Children left behind by a worker that did not stop in time (or died) go too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)


def kill_worker(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker and all its children at once (a crash, not a shutdown)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
