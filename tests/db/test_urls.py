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
