"""Rebuilding stored exceptions safely: the sandbox behind ``AsyncResult.get()`` raising.

Celery rebuilds a failed task's exception from the names stored with it (module, class,
message). A result row is data anyone with write access to the table can shape, so here
a module that is not imported, an attribute that is not an exception class, or one
reachable only through a module's ``__getattr__`` (which may import) all yield a generic
exception of that name: nothing is imported or called but the class's constructor.
Only :class:`Exception` subclasses are rebuilt as themselves: a row naming a
``BaseException`` that is not an ``Exception`` (``SystemExit``, ``KeyboardInterrupt``,
``GeneratorExit``…) loads as a generic exception, so ``.get()`` never raises one of those.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

from celery.utils.serialization import create_exception_cls


def rebuild_exception(stored: Any) -> BaseException | None:
    """The exception a stored ``{exc_type, exc_module, exc_message}`` names, or ``None``
    when ``stored`` is not in that form (Celery's own handling applies then)."""
    if not stored or isinstance(stored, BaseException) or not isinstance(stored, dict):
        return None
    exc_type = stored.get("exc_type")
    if not isinstance(exc_type, str) or not exc_type:
        return None
    cls = stored_exception_class(stored.get("exc_module"), exc_type)
    message = stored.get("exc_message", "")
    try:
        if isinstance(message, (list, tuple)):
            return cls(*message)
        return cls(message)
    except Exception:  # noqa: BLE001 - a constructor that refuses the stored args
        return Exception(f"{exc_type}({message!r})")


def stored_exception_class(module_name: Any, qualname: str) -> type[BaseException]:
    """The exception class a stored result names (an :class:`Exception` subclass already
    imported), or a generic stand-in for it."""
    name = qualname.rsplit(".", 1)[-1]
    obj: Any = sys.modules.get(module_name) if isinstance(module_name, str) else None
    if obj is not None:
        for part in qualname.split("."):
            # getattr_static never runs a module __getattr__ or a descriptor.
            obj = inspect.getattr_static(obj, part, None)
            if obj is None:
                break
        # Exception only: a BaseException such as SystemExit would stop the caller.
        if isinstance(obj, type) and issubclass(obj, Exception):
            return obj
    return create_exception_cls(_safe_name(name), "celery.exceptions")


def _safe_name(name: str) -> str:
    cleaned = "".join(c for c in name if c.isalnum() or c == "_")[:100]
    return cleaned if cleaned and not cleaned[0].isdigit() else "RemoteException"
