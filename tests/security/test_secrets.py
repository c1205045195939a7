"""Passwords never show: not in worker logs, ``celery inspect conf`` (what Flower's config
tab shows), ``celery report``, the broker URL as kombu renders it (Flower's broker page),
errors, reprs or ``swf-celery`` output."""

from __future__ import annotations

import os
import subprocess
import sys
from urllib.parse import unquote, urlsplit

import pytest
from celery import Celery

from swf_celery import db
from swf_celery.errors import SwfError
from tests.helpers import ROOT, read_log, run_cli, swf_url, worker_process
from tests.security import role_app

pytestmark = [pytest.mark.slow]


def _password(url: str) -> str:
    secret = urlsplit(url).password
    assert secret and len(secret) >= 8
    return unquote(secret)


def _celery(*args: str, url: str) -> str:
    env = dict(os.environ, SWF_ROLE_URL=url, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "celery", "-A", "tests.security.role_app",
                           *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=120)
    return proc.stdout + proc.stderr


def test_worker_logs_inspect_and_report_mask_the_password(worker_role_url: str) -> None:
    secret = _password(worker_role_url)
    with worker_process("tests.security.role_app", queues=[role_app.QUEUE],
                        env={"SWF_ROLE_URL": worker_role_url}, hostname="masked@%h") as proc:
        conf = _celery("inspect", "conf", "-d", "masked@" + os.uname().nodename, "--json",
                       url=worker_role_url)
        assert '"broker_url"' in conf, conf[-2000:]
        assert secret not in conf
        report = _celery("report", url=worker_role_url)
        assert "broker_url" in report and secret not in report
        log = read_log(proc)
        assert "swf://" in log and secret not in log
    app = Celery("shown", broker=swf_url(worker_role_url), set_as_current=False)
    with app.connection() as conn:
        assert secret not in conn.as_uri() and "**" in conn.as_uri()
        assert secret not in repr(conn)


def test_errors_and_reprs_mask_the_password(db_url: str) -> None:
    unreachable = "postgresql://app:s3cret-pass@127.0.0.1:1/app?connect_timeout=2"
    cases = [(unreachable, "s3cret-pass")]
    if urlsplit(db_url).password:  # a server that checks passwords (not trust)
        cases.append((db_url.replace("@", "-wrong-secret@", 1), "wrong-secret"))
    for url, secret in cases:
        handle = db.resolve(url)
        assert secret not in repr(handle)
        with pytest.raises(SwfError) as caught:
            handle.connect().close()
        assert secret not in str(caught.value)
    assert "s3cret" not in db.redact("host=h user=app password=s3cret-pass dbname=app")
    assert "s3cret" not in db.redact(unreachable + "&password=s3cret-pass")


def test_cli_output_masks_the_password(db_url: str) -> None:
    secret = _password(db_url) if urlsplit(db_url).password else None
    proc = run_cli("version", database=db_url)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("database: ") and "(from --database)" in proc.stderr
    if secret:
        assert secret not in proc.stdout + proc.stderr
    bad = run_cli("migrate", database="postgresql://app:s3cret-pass@127.0.0.1:1/app")
    assert bad.returncode == 1 and "s3cret-pass" not in bad.stdout + bad.stderr
    assert "postgresql://app:***@127.0.0.1:1/app (from --database)" in bad.stderr
