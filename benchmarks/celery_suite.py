"""Celery's own integration tests (canvas, tasks, inspect) against swf:// and against Redis.

``make celery-suite`` (or ``python -m benchmarks.celery_suite [--only swf|redis] [-k EXPR]``);
``make celery-suite ONLY=swf`` runs the swf side alone, as CI does:

1. downloads the source distribution of the installed Celery version from PyPI into
   ``build/celery-suite`` (``pip download celery==X --no-binary :all: --no-deps``; GitHub is
   not needed) and extracts its ``t/`` folder;
2. installs what the suite imports and the project does not depend on (pydantic, for one
   task) into ``build/celery-suite/deps`` (not into the project's environment);
3. runs ``t/integration/test_canvas.py``, ``test_tasks.py`` and ``test_inspect.py`` once with
   the swf:// broker and result backend (a fresh, migrated database) and once with Redis as
   both, each with Celery's own fixtures (one in-process prefork worker per run);
4. prints passed/failed/skipped counts, the failed tests and each side's wall time, and
   (both sides, without ``-k``) writes them into ``docs/benchmarks.md`` between the
   ``celery-suite`` markers, with the commit they ran at;
5. exits with status 1 when a test failed on swf that is not in :data:`KNOWN_FAILURES` (the
   tests that fail on Redis too, each with its reason), or when the swf side did not finish
   within ``--max-minutes``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import celery
import psycopg
from psycopg import sql

from swf_celery.db import database_url, normalize_dsn

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "build" / "celery-suite"
MODULES = ["t/integration/test_canvas.py", "t/integration/test_tasks.py",
           "t/integration/test_inspect.py"]
#: What t/integration imports beyond celery, kombu, redis and pytest (pinned: CI installs it).
EXTRA_DEPS = ["pydantic==2.14.4"]
REDIS = "redis://127.0.0.1:6379/5"
DOCS = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- section: bench_celery_suite -->", "<!-- /section -->"
#: Longest a single test may take before pytest-timeout fails it.
TEST_TIMEOUT = 180
#: Longest one side may take (``--max-minutes``): it takes about 10 minutes on the 2 cores of
#: the development machine; CI has 90 minutes for everything.
MAX_MINUTES = 30.0
#: Tests that fail on Redis as on swf, for reasons of the test or the machine, not of the
#: broker: the swf side fails on any failure not listed here. Names as in the JUnit report.
KNOWN_FAILURES = {
    "t.integration.test_tasks.test_tasks::test_revoked_by_headers_complex_canvas":
        "its 20 s pytest timeout is shorter than the sleeping tasks of its canvases take on "
        "the one session worker of this machine (Celery reruns it, `flaky`; reruns are off)",
    "t.integration.test_tasks.test_trace_log_arguments::test_task_success":
        "expects the worker's `received` and `succeeded` log records in pytest's `caplog` "
        "10 ms after the result arrived; none reach it on either broker",
    "t.integration.test_tasks.test_trace_log_arguments::test_task_failed":
        "as test_task_success, for the `failed` record",
    "t.integration.test_tasks.test_task_replacement::test_replaced_task_nesting_level_0":
        "a race in the test: its `task_received` handler runs in the in-process worker and "
        "may set the outcome before the test's `assertion_result = False`, the line after "
        "`delay()`, overwrites it; the worker receives the message before `delay()` returns "
        "for 4-10 % of sends on Redis and on swf alike (200 sends each, one process, this "
        "machine). The header itself arrives as on Redis: "
        "tests/transport/test_request_parity.py",
}
NOTES = """\
"passed" includes xpassed. Skipped on swf: the tests that need Redis as result backend
(Celery skips them unless `TEST_BACKEND` is `redis://`). Reruns of `flaky` tests are off
(pytest-rerunfailures is not installed), so timing-sensitive tests count as failures on both
sides. `test_inspect::test_Inspect::test_revoked` and `test_canvas::test_chord::
test_error_propagates_from_chord` (xfail on Redis, Celery#6437) pass on swf.
`test_chord_header_id_duplicated_on_rabbitmq_msg_duplication` (xfail on a Redis broker)
republishes a chain's first task from a `before_task_publish` handler to simulate a RabbitMQ
duplicate, and hands the handler's `**kwargs`, the dispatcher's `signal` object among them,
to `Producer.publish`, which makes them message properties. py-amqp sends only AMQP's own
properties and drops that one; swf leaves out the properties JSON cannot carry, so both
copies run in the same chord header group and the test passes."""
RUNNER = ("import sys, pytest, swf_celery  # swf:// registered before Celery's fixtures run\n"
          "sys.exit(pytest.main(sys.argv[1:]))")
PYTEST_INI = """[pytest]
markers =
    flaky
    timeout
    amqp
python_classes = test_*
"""


@dataclass
class Outcome:
    """Counts of one run, from pytest's JUnit XML."""

    target: str
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0
    timed_out: bool = False

    def unexpected(self) -> list[str]:
        """The failures not in :data:`KNOWN_FAILURES` (on Redis: every one is reported)."""
        return sorted(f for f in self.failures if f not in KNOWN_FAILURES)


def fetch_suite(version: str) -> Path:
    """The extracted ``t/`` of Celery ``version``'s sdist (downloaded once)."""
    WORK.mkdir(parents=True, exist_ok=True)
    archive = WORK / f"celery-{version}.tar.gz"
    if not archive.exists():
        subprocess.run([sys.executable, "-m", "pip", "download", f"celery=={version}",
                        "--no-binary", ":all:", "--no-deps", "-d", str(WORK)], check=True)
    run_dir = WORK / f"run-{version}"
    if not (run_dir / "t" / "integration").is_dir():
        prefix = f"celery-{version}/t/"
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            if not any(m.name.startswith(prefix + "integration/") for m in members):
                raise SystemExit(f"{archive.name} has no t/integration: cannot run the suite")
            for m in members:
                m.name = m.name[len(f"celery-{version}/"):]
            tar.extractall(run_dir, members=members, filter="data")
    (run_dir / "pytest.ini").write_text(PYTEST_INI)
    return run_dir


def ensure_deps() -> Path:
    """Install the suite's extra imports into ``build/celery-suite/deps``."""
    deps = WORK / "deps"
    if not (deps / "pydantic").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target",
                        str(deps), *EXTRA_DEPS], check=True)
    return deps


@contextlib.contextmanager
def fresh_database() -> Iterator[str]:
    """The swf:// URL of a new migrated database on the server of ``SWF_DATABASE_URL`` (or
    the embedded one), dropped afterwards."""
    base = normalize_dsn(database_url(start_embedded=True).url)
    name = f"celery_suite_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        url = psycopg.conninfo.make_conninfo(base, dbname=name)
        subprocess.run([sys.executable, "-m", "swf_celery.cli", "migrate", "-d", url],
                       check=True, stdout=subprocess.DEVNULL)
        params = psycopg.conninfo.conninfo_to_dict(url)
        auth = params.get("user", "postgres") + (f":{params['password']}"
                                                 if params.get("password") else "")
        yield (f"swf://{auth}@{params.get('host', '127.0.0.1')}:{params.get('port', 5432)}"
               f"/{name}")
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


def run(target: str, run_dir: Path, deps: Path, keyword: str | None, *, both: bool,
        max_minutes: float = MAX_MINUTES) -> Outcome:
    """Run the three modules against ``target`` (``swf`` or ``redis``). The JUnit report of
    a run of both sides is kept apart from that of one side (``--report`` reads the pair)."""
    with contextlib.ExitStack() as stack:
        if target == "swf":
            url = stack.enter_context(fresh_database())
        else:
            import redis

            url = REDIS
            redis.Redis.from_url(REDIS).flushdb()
        return _run_pytest(target, url, run_dir, deps, keyword, both=both,
                           max_minutes=max_minutes)


def _run_pytest(target: str, url: str, run_dir: Path, deps: Path, keyword: str | None, *,
                both: bool, max_minutes: float) -> Outcome:
    report = WORK / (f"junit-{target}.xml" if both else f"junit-{target}-only.xml")
    report.unlink(missing_ok=True)
    env = dict(os.environ, TEST_BROKER=url, TEST_BACKEND=url,
               PYTHONPATH=os.pathsep.join([str(run_dir), str(deps)]))
    args = [sys.executable, "-c", RUNNER, *MODULES, "-q", "-p", "no:cacheprovider",
            "-p", "celery.contrib.pytest", f"--timeout={TEST_TIMEOUT}",
            f"--junitxml={report}", "-o", "junit_family=xunit2"]
    if keyword:
        args += ["-k", keyword]
    print(f"== Celery {celery.__version__} t/integration against {target}: "
          f"{_without_password(url)}", flush=True)
    started = time.monotonic()
    # Its own process group: the session worker's pool children go with it on a timeout.
    proc = subprocess.Popen(args, cwd=run_dir, env=env, start_new_session=True)
    timed_out = False
    try:
        proc.wait(max_minutes * 60)
    except subprocess.TimeoutExpired:
        timed_out = True
        print(f"== {target}: not finished in {max_minutes:g} minutes; stopped", flush=True)
    finally:  # also on Ctrl-C, which its own session does not receive
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    outcome = parse(target, report)
    outcome.seconds = time.monotonic() - started
    outcome.timed_out = timed_out
    return outcome


def _without_password(url: str) -> str:
    return re.sub(r"(//[^:/@]+):[^@]*@", r"\1:***@", url)


def parse(target: str, report: Path) -> Outcome:
    """Counts from a JUnit XML report (xfail and skip both count as skipped)."""
    outcome = Outcome(target)
    if not report.exists():
        return outcome
    for case in ET.parse(report).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None:
            outcome.failed += 1
            outcome.failures.append(name)
        elif case.find("error") is not None:
            outcome.errors += 1
            outcome.failures.append(name)
        elif case.find("skipped") is not None:
            outcome.skipped += 1
        else:
            outcome.passed += 1
    return outcome


def _commit() -> str:
    """The checked-out commit (short hash, marked when tracked files have changes), or "an
    unknown commit" outside a git tree."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "an unknown commit"
    return f"{head} (with uncommitted changes)" if dirty.strip() else head


def table(outcomes: list[Outcome]) -> str:
    """The markdown written into docs/benchmarks.md."""
    lines = [f"Celery {celery.__version__} `t/integration` (canvas, tasks, inspect), "
             "`make celery-suite`, one in-process prefork worker per side, both sides in one "
             f"run, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC at commit "
             f"{_commit()}, load average {_load()}:", "",
             "| broker + backend | passed | failed | errors | skipped/xfail | wall time |",
             "|---|---|---|---|---|---|"]
    for o in outcomes:
        lines.append(f"| {o.target} | {o.passed} | {o.failed} | {o.errors} | {o.skipped} "
                     f"| {o.seconds / 60:.1f} min{' (stopped)' if o.timed_out else ''} |")
    lines += ["", NOTES, "", "Known failures (they fail on Redis too; `make celery-suite "
              "ONLY=swf`, run by CI, fails on any other failure on swf):", ""]
    lines += [f"- `{name}`: {why}." for name, why in KNOWN_FAILURES.items()]
    for o in outcomes:
        if o.failures:
            lines += ["", f"Failed on {o.target}:", ""]
            lines += [f"- `{name}`" for name in sorted(o.failures)]
    return "\n".join(lines)


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def verdict(outcome: Outcome) -> str | None:
    """Why the swf side failed the check, or None when it passed."""
    if outcome.timed_out:
        return f"the swf side did not finish within its time ({outcome.seconds / 60:.1f} min)"
    if outcome.passed == 0:
        return "no test passed on swf (no JUnit report, or the run broke)"
    unexpected = outcome.unexpected()
    if unexpected:
        return ("tests failed on swf that are not known to fail on Redis too:\n"
                + "\n".join(f"  {name}" for name in unexpected))
    return None


def write_docs(text: str) -> None:
    """Write ``text`` as the ``bench_celery_suite`` section of docs/benchmarks.md (the
    section format of benchmarks/run.py, which keeps it when ``make bench`` rewrites)."""
    doc = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n\n"
    block = f"{BEGIN}\n## Celery's integration suite (`make celery-suite`)\n\n{text}\n{END}\n"
    if BEGIN in doc and END in doc:
        doc = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END) + "\n", lambda _: block, doc,
                     flags=re.S)
    else:
        doc = doc.rstrip("\n") + "\n\n" + block
    DOCS.write_text(doc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["swf", "redis"])
    parser.add_argument("-k", dest="keyword")
    parser.add_argument("--max-minutes", type=float, default=MAX_MINUTES,
                        help="stop a side (and fail) after this many minutes")
    parser.add_argument("--report", action="store_true",
                        help="only rewrite the docs from the last two-sided run's reports")
    options = parser.parse_args()
    if options.report:
        outcomes = [parse(t, WORK / f"junit-{t}.xml") for t in ("swf", "redis")]
        write_docs(table(outcomes))
        return
    run_dir = fetch_suite(celery.__version__)
    deps = ensure_deps()
    targets = [options.only] if options.only else ["swf", "redis"]
    outcomes = [run(t, run_dir, deps, options.keyword, both=not options.only,
                    max_minutes=options.max_minutes) for t in targets]
    text = table(outcomes)
    print(text)
    if not options.keyword and not options.only:
        write_docs(text)
    for o in outcomes:
        print(f"== {o.target}: {o.passed} passed, {o.failed} failed, {o.errors} errors, "
              f"{o.skipped} skipped in {o.seconds / 60:.1f} min (load {_load()})")
    swf = next((o for o in outcomes if o.target == "swf"), None)
    problem = verdict(swf) if swf is not None else None
    if problem:
        raise SystemExit(f"celery-suite: {problem}")


if __name__ == "__main__":
    main()
