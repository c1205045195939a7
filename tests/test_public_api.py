"""The public API: every name in ``swf_celery.__all__`` resolves, lazily, to a typed object."""

from __future__ import annotations

import swf_celery


def test_every_public_name_resolves_and_all_lists_exactly_them() -> None:
    lazy = set(swf_celery._LAZY) | swf_celery._SUBPACKAGES
    assert set(swf_celery.__all__) == lazy | {"SwfError", "__version__"}
    for name in swf_celery.__all__:
        assert getattr(swf_celery, name) is not None, name


def test_every_public_error_derives_from_swf_error() -> None:
    from swf_celery import errors

    classes = [v for v in vars(errors).values()
               if isinstance(v, type) and issubclass(v, Exception)]
    assert classes and all(issubclass(c, swf_celery.SwfError) for c in classes)


def test_schedules_are_reached_as_swf_schedules() -> None:
    from swf_celery import schedules

    assert swf_celery.schedules is schedules
    assert callable(swf_celery.schedules.add) and swf_celery.schedules.Scheduler.tick
