"""The one database-URL resolver and URL forms (no server needed)."""

from __future__ import annotations

import pytest
from celery import Celery

from swf_celery import db
from swf_celery.errors import ConfigurationError

EXPLICIT = "postgresql://explicit@h1/a"
SETTING = "postgresql://setting@h2/b"
BROKER = "swf://broker@h3/c"
BACKEND = "swf://backend@h4/d"
ENV = "postgresql://env@h5/e"


def _app(**conf: object) -> Celery:
    app = Celery("urls", set_as_current=False)
    app.conf.update(conf)
    return app


def test_precedence_explicit_setting_broker_backend_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWF_DATABASE_URL", ENV)
    full = _app(swf_database_url=SETTING, broker_url=BROKER, result_backend=BACKEND)
    assert db.database_url(EXPLICIT, app=full) == db.DatabaseUrl(EXPLICIT, "argument")
    assert db.database_url(app=full) == db.DatabaseUrl(SETTING, "app.conf.swf_database_url")
    no_setting = _app(broker_url=BROKER, result_backend=BACKEND)
    assert db.database_url(app=no_setting) == db.DatabaseUrl(BROKER, "app.conf.broker_url")
    redis_broker = _app(broker_url="redis://localhost/0", result_backend=BACKEND)
    assert db.database_url(app=redis_broker).url == BACKEND
    unrelated = _app(broker_url="redis://localhost/0", result_backend="redis://localhost/1")
    assert db.database_url(app=unrelated) == db.DatabaseUrl(ENV, "$SWF_DATABASE_URL")
    assert db.database_url() == db.DatabaseUrl(ENV, "$SWF_DATABASE_URL")


def test_nothing_configured_and_no_embedded_server_is_a_clear_error(
        monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    monkeypatch.delenv("SWF_DATABASE_URL", raising=False)
    monkeypatch.setenv("SWF_HOME", str(tmp_path))  # an embedded home with no server
    with pytest.raises(ConfigurationError, match="swf-celery db start"):
        db.database_url()
    with pytest.raises(ConfigurationError, match="swf_database_url"):
        db.database_url(app=_app(broker_url="redis://localhost/0"))


@pytest.mark.parametrize(("dsn", "expected"), [
    ("postgresql://u:p%40ss@h:5433/db", "swf://u:p%40ss@h:5433/db"),
    ("postgres://u@h/db", "swf://u@h/db"),
    ("swf://u@h/db", "swf://u@h/db"),
    ("postgresql+psycopg://u@h/db", "swf://u@h/db"),
    ("host=h port=5433 user=u password=p@ss dbname=db", "swf://u:p%40ss@h:5433/db"),
    ("host=h dbname=db", "swf://h/db"),
])
def test_broker_url_of_every_dsn_form(dsn: str, expected: str) -> None:
    assert db.broker_url(dsn) == expected


def test_broker_url_refuses_what_is_not_postgresql() -> None:
    with pytest.raises(ConfigurationError, match="not PostgreSQL"):
        db.broker_url("redis://localhost/0")


def test_broker_url_from_celerys_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    # Celery reads CELERY_BROKER_URL into app.conf.broker_url when nothing sets it in code.
    monkeypatch.delenv("SWF_DATABASE_URL", raising=False)
    monkeypatch.setenv("CELERY_BROKER_URL", BROKER)
    assert db.database_url(app=_app()) == db.DatabaseUrl(BROKER, "app.conf.broker_url")


def test_read_only_url_adds_the_option_and_keeps_the_rest() -> None:
    from psycopg.conninfo import conninfo_to_dict

    plain = db.read_only_url("postgresql://u:p@h:5432/d?sslmode=require")
    assert conninfo_to_dict(plain)["options"] == "-c default_transaction_read_only=on"
    assert conninfo_to_dict(plain)["sslmode"] == "require"
    given = db.read_only_url("postgresql://u@h/d?options=-c%20work_mem%3D4MB"
                             "&listen_url=postgresql%3A%2F%2Fu%40h%3A6432%2Fd")
    main, listen = db.split_listen_url(given)
    assert listen == "postgresql://u@h:6432/d"
    assert conninfo_to_dict(main)["options"] == (
        "-c work_mem=4MB -c default_transaction_read_only=on")
    keywords = db.read_only_url("host=h dbname=d options='-c search_path=x'")
    assert conninfo_to_dict(keywords)["options"] == (
        "-c search_path=x -c default_transaction_read_only=on")


def test_split_listen_url_leaves_the_other_parameters_as_written() -> None:
    # libpq decodes %XX only: a space re-encoded as "+" would reach it as a plus sign.
    main, _ = db.split_listen_url("postgresql://h/d?options=-c%20work_mem%3D4MB"
                                  "&listen_url=postgresql%3A%2F%2Fh%3A6432%2Fd&sslmode=require")
    assert main == "postgresql://h/d?options=-c%20work_mem%3D4MB&sslmode=require"
