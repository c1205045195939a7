"""The Celery result backend in PostgreSQL: ``result_backend = "swf://user@host:5432/db"``.

Selected through the ``celery.result_backends`` entry point ``swf``. Needs the schema of
``swf-celery migrate`` (tables ``swf.task_results``, ``swf.group_results``, ``swf.chords``,
``swf.chord_parts``; ``sql/migrations/0003_results.sql``, ``sql/functions/results.sql``).

Behaviour
    - Results are encoded with Celery's ``result_serializer`` (JSON by default; pickle only
      when the app opts in) and stored with their state; name, worker, queue, retries,
      group and parent are also columns, so results can be queried with SQL.
      ``result_extended`` adds args/kwargs to the stored meta as with other backends.
    - Waiting (``AsyncResult.get()``, ``ResultSet.join()``/``join_native()``) wakes on a
      NOTIFY on the result's own channel (see :mod:`swf_celery.results.consumer`): only
      the waiters of that result are woken, a process LISTENs only while it waits, no
      polling interval is in the latency, and payloads of any size are fine.
    - A stored SUCCESS is never overwritten by a later state (a redelivered copy of a
      finished task).
    - Chords: a counter row per chord, updated atomically by each header part
      (``swf.chord_part_return``); the part that completes the header claims the chord and
      applies the callback. No ``chord_unlock`` task, no polling. A failed header part
      fails the callback through its errbacks, as on Redis.
    - ``result_expires`` (and ``result_failure_expires``) set an expiry on each row;
      ``celery.backend_cleanup`` (:meth:`SwfBackend.cleanup`) deletes expired rows in
      batches.
    - A chord whose header has not completed by its expiry (``result_chord_expires``, else
      ``result_expires``; each returning part renews it) loses its parts but keeps a marker
      (``swf.expire_chords``): the first header part that returns later fails the callback
      with a :class:`~celery.exceptions.ChordError` naming the chord, the part and the
      expiry, once. A part never re-creates a chord's row.
    - A stored exception naming a module that is not imported, or a name that is not an
      exception class, is rebuilt as a generic exception: nothing is imported or called.
    - Connection errors (a database restart) are retried for ``retry_timeout`` seconds.

Options (``result_backend_transport_options``)
    ``retry_timeout`` (30.0)
        Seconds a store/read keeps retrying while PostgreSQL is unreachable.
    ``cleanup_batch`` (10000)
        Rows deleted per statement by :meth:`SwfBackend.cleanup`.
    ``pool_size`` (8)
        Lets the process's shared pool (:mod:`swf_celery.db`, shared with the workflow
        engine and messaging) grow to this many connections for storing and reading
        results (plus one listening connection in processes that wait).
    ``synchronous_commit`` ("off")
        PostgreSQL's ``synchronous_commit`` for storing results and chord parts (that
        transaction only). "off" skips the WAL flush wait (about 1 ms per result on this
        machine): a crash of the *server* (not of a worker) may lose results committed in
        the last ~0.6 s, never corrupts anything, and loses less than Redis's default
        snapshotting. Set "on" for results that must survive a server crash.
"""

from __future__ import annotations

import time
from typing import Any
from uuid import uuid4

from celery import states
from celery._state import task_join_will_block
from celery.backends.asynchronous import AsyncBackendMixin
from celery.backends.base import Backend, _create_chord_error_with_cause
from celery.canvas import maybe_signature
from celery.exceptions import ChordError, TimeoutError
from celery.result import GroupResult, allow_join_result, result_from_tuple
from celery.utils.functional import _regen
from celery.utils.log import get_logger
from kombu.utils.encoding import bytes_to_str

from swf_celery import db
from swf_celery.errors import ConfigurationError, DatabaseUnavailable
from swf_celery.results.consumer import ResultConsumer
from swf_celery.results.exceptions import rebuild_exception

logger = get_logger(__name__)

QUERIES = db.load_queries(__package__)

_SYNCHRONOUS_COMMIT = ("off", "local", "remote_write", "remote_apply", "on")

#: How long the done marker of a finished chord outlives it (late header copies).
CHORD_DONE_SECONDS = 3600.0
#: ``swf.chord_part_return``'s ``ready`` when the part changes nothing: the chord fired (or
#: its expiry was reported); the chord expired with its header incomplete (this part fails
#: it); no record of the chord is left.
CHORD_DONE, CHORD_EXPIRED, CHORD_UNKNOWN = -1, -2, -3


class SwfBackend(Backend, AsyncBackendMixin):
    """Celery result backend storing results in PostgreSQL and waking waiters by NOTIFY."""

    ResultConsumer = ResultConsumer

    supports_native_join = True
    supports_autoexpire = False  # so celery beat schedules celery.backend_cleanup
    supports_result_compression = True  # payloads are bytea
    supports_failure_expires = True

    def __init__(self, app: Any = None, url: str | None = None, **kwargs: Any) -> None:
        super().__init__(app, url=url, expires_type=float, **kwargs)
        url = url or self.app.conf.result_backend
        if not isinstance(url, str) or "://" not in url:
            raise ConfigurationError(
                f"result_backend {url!r} is not a URL: use swf://user@host:5432/dbname")
        self.url = url
        self.dsn = db.normalize_dsn(url)
        options = self.app.conf.get("result_backend_transport_options") or {}
        self.retry_timeout = _option(options, "retry_timeout", float, 30.0, minimum=0)
        self.cleanup_batch = _option(options, "cleanup_batch", int, 10000, minimum=1)
        self.pool_size = _option(options, "pool_size", int, 8, minimum=1)
        self.synchronous_commit = str(options.get("synchronous_commit", "off"))
        if self.synchronous_commit not in _SYNCHRONOUS_COMMIT:
            raise ConfigurationError(
                f"result_backend_transport_options synchronous_commit="
                f"{self.synchronous_commit!r}: use one of {', '.join(_SYNCHRONOUS_COMMIT)}")
        failure_expires = self.app.conf.get("result_failure_expires")
        self.failure_expires = (self.expires if failure_expires is None
                                else self.prepare_expires(failure_expires, type=float))
        self.dsn = db.with_listen_url(self.dsn, self.app.conf.get("swf_listen_url"))
        self.db = db.resolve(self.dsn, role="results")
        self.db.reserve(self.pool_size)
        self.result_consumer = self.ResultConsumer(
            self, self.app, self.accept, self._pending_results, self._pending_messages)

    def close(self) -> None:
        """Close this process's listening connection (the shared pool stays open)."""
        self.result_consumer.stop()

    def __reduce__(self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None) -> Any:
        return super().__reduce__(args, dict(kwargs or {}, url=self.url, expires=self.expires))

    # -- database access -------------------------------------------------------------------

    def _execute(self, name: str, params: dict[str, Any], fetch: str | None = None) -> Any:
        """Run query ``name`` as one statement; retry while the server is unreachable
        (every query is idempotent or guarded, so a retry after a lost reply is harmless)."""
        def once() -> Any:
            # Wait for a pooled connection no longer than the retries would (at least 1 s).
            with self.db.single_statement(timeout=max(1.0, self.retry_timeout)) as conn:
                cur = conn.execute(QUERIES[name], params)
                if fetch == "one":
                    return cur.fetchone()
                if fetch == "all":
                    return cur.fetchall()
                return cur.rowcount

        return db.retry_unavailable(once, timeout=self.retry_timeout)

    def exception_safe_to_retry(self, exc: BaseException) -> bool:
        return isinstance(exc, DatabaseUnavailable)

    @staticmethod
    def _bytes(payload: str | bytes) -> bytes:
        return payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)

    def _expires(self, state: str) -> float:
        expires = self.failure_expires if state == states.FAILURE else self.expires
        return float(expires or 0)

    def _chord_expires(self) -> float:
        value = self.app.conf.get("result_chord_expires")
        seconds = self.expires if value is None else self.prepare_expires(value, type=float)
        return float(seconds or 0)

    # -- task results ----------------------------------------------------------------------

    def _store_result(self, task_id: str, result: Any, state: str, traceback: Any = None,
                      request: Any = None, **kwargs: Any) -> Any:
        meta = self._get_result_meta(result=result, state=state, traceback=traceback,
                                     request=request)
        meta["task_id"] = bytes_to_str(task_id)
        delivery = getattr(request, "delivery_info", None) or {}
        self._execute("store_result", {
            "task_id": meta["task_id"],
            "status": state,
            "payload": self._bytes(self.encode(meta)),
            "name": getattr(request, "task", None),
            "worker": getattr(request, "hostname", None),
            "queue": delivery.get("routing_key"),
            "retries": getattr(request, "retries", None),
            "group_id": meta.get("group_id"),
            "parent_id": meta.get("parent_id"),
            "ready": state in states.READY_STATES,
            "expires": self._expires(state),
            "synchronous_commit": self.synchronous_commit,
        })
        return result

    def _get_task_meta_for(self, task_id: str) -> dict[str, Any]:
        row = self._execute("get_result", {"task_id": bytes_to_str(task_id)}, fetch="one")
        if row is None:
            return {"status": states.PENDING, "result": None}
        return self.decode_result(row[0])

    def _forget(self, task_id: str) -> None:
        self._execute("forget_result", {"task_id": bytes_to_str(task_id)})
        self.result_consumer.cancel_for(task_id)

    def get_many(self, task_ids: Any, timeout: float | None = None, interval: float = 0.5,
                 no_ack: bool = True, on_message: Any = None, on_interval: Any = None,
                 max_iterations: int | None = None, READY_STATES: Any = states.READY_STATES,
                 ) -> Any:
        """Yield ``(task_id, meta)`` for ready results, one query per pass.

        Celery's ``ResultSet`` reads stored results through this (with
        ``max_iterations=1``); waiting is left to the NOTIFY consumer.
        """
        ids = {bytes_to_str(i) for i in task_ids}
        for task_id in list(ids):
            cached = self._cache.get(task_id)
            if cached is not None and cached["status"] in READY_STATES:
                ids.discard(task_id)
                yield task_id, cached
        iterations = 0
        started = time.monotonic()
        while ids:
            rows = self._execute("get_results", {"task_ids": list(ids)}, fetch="all")
            for task_id, payload in rows:
                meta = self.decode_result(payload)
                if meta["status"] not in READY_STATES:
                    continue
                ids.discard(task_id)
                self._cache[task_id] = meta
                if on_message is not None:
                    on_message(meta)
                yield task_id, meta
            iterations += 1
            if not ids or (max_iterations and iterations >= max_iterations):
                break
            if timeout is not None and time.monotonic() - started >= timeout:
                raise TimeoutError(f"Operation timed out ({timeout})")
            if on_interval:
                on_interval()
            time.sleep(interval)

    def mark_as_failure(self, task_id: str, exc: Any, traceback: Any = None,
                        request: Any = None, store_result: bool = True,
                        call_errbacks: bool = True, state: str = states.FAILURE) -> None:
        """As Celery's, and the failure also reaches the tasks of a group chained after the
        failed task (Celery#6437: waiting on that group would otherwise never return)."""
        super().mark_as_failure(task_id, exc, traceback=traceback, request=request,
                                store_result=store_result, call_errbacks=call_errbacks,
                                state=state)
        if request is None or not store_result or state not in states.PROPAGATE_STATES:
            return
        chain = getattr(request, "chain", None)
        for element in chain if isinstance(chain, list | tuple) else ():
            if isinstance(element, dict) and element.get("subtask_type") == "group":
                for child_id in _result_ids(element):
                    self.store_result(child_id, exc, state, traceback=traceback)

    def on_task_call(self, producer: Any, task_id: str) -> None:
        # Subscribe at send time (as the Redis backend does) so a result that arrives
        # before get() is buffered instead of read again.
        if not task_join_will_block():
            self.result_consumer.consume_from(task_id)

    # -- groups ----------------------------------------------------------------------------

    def _save_group(self, group_id: str, result: Any) -> Any:
        self._execute("save_group", {
            "group_id": group_id,
            "payload": self._bytes(self.encode({"result": result.as_tuple()})),
            "expires": float(self.expires or 0),
        })
        return result

    def _restore_group(self, group_id: str) -> dict[str, Any] | None:
        row = self._execute("restore_group", {"group_id": group_id}, fetch="one")
        if row is None:
            return None
        meta = self.decode(row[0])
        meta["result"] = result_from_tuple(meta["result"], self.app)
        return meta

    def _delete_group(self, group_id: str) -> None:
        self._execute("delete_group", {"group_id": group_id})

    # -- chords ----------------------------------------------------------------------------

    def apply_chord(self, header_result_args: Any, body: Any, **kwargs: Any) -> None:
        """Reset the chord's counter before its header is sent (no chord_unlock task)."""
        self.ensure_chords_allowed()
        group_id = header_result_args[0]
        header = None
        # A header holding groups must reach the callback with its structure, which the
        # flat list of parts loses: keep the header result (as Celery's Redis backend).
        if not isinstance(header_result_args[1], _regen):
            header_result = self.app.GroupResult(*header_result_args)
            if any(isinstance(r, GroupResult) for r in header_result.results):
                header = self._bytes(self.encode({"result": header_result.as_tuple()}))
        self._execute("apply_chord", {"group_id": group_id, "header": header,
                                      "expires": self._chord_expires()})

    def set_chord_size(self, group_id: str, chord_size: int) -> None:
        self._execute("set_chord_size", {"group_id": group_id, "size": chord_size})

    def add_to_chord(self, group_id: str, result: Any) -> None:
        # Keyed by the added task's id: a retry after a lost reply counts it once.
        task_id = getattr(result, "id", None) or str(uuid4())
        self._execute("add_to_chord", {"group_id": group_id, "task_id": str(task_id)})

    def on_chord_part_return(self, request: Any, state: str, result: Any,
                             propagate: Any = None, **kwargs: Any) -> None:
        task_id, group_id = request.id, request.group
        if not group_id or not task_id:
            return
        group_index = request.group_index
        # One token per part: if the reply is lost and _execute retries, the retry carries
        # the same token and recognises its own claim.
        token = uuid4().hex
        join_timeout = self.app.conf.result_chord_join_timeout or 5.0
        payload = self.encode([task_id, state, self.encode_result(result, state)])
        ready, total, claimed = self._execute("chord_part_return", {
            "group_id": group_id, "task_id": task_id,
            "group_index": 2**31 - 1 if group_index is None else group_index,
            "state": state, "payload": self._bytes(payload), "token": token,
            # The claimer joins (header with groups) and publishes within this lease;
            # after it, a redelivered header part may take the callback over.
            "claim_seconds": max(60.0, 2 * float(join_timeout)),
            "expires": self._chord_expires(),
            "synchronous_commit": self.synchronous_commit,
        }, fetch="one")
        if ready == CHORD_EXPIRED:
            return self._fail_expired_chord(request, total, claimed)
        if ready == CHORD_UNKNOWN:
            logger.warning("Chord %r: header part %r returned after the chord's record was "
                           "deleted (it finished, or expired, long ago); ignored",
                           group_id, task_id)
            return None
        if ready == CHORD_DONE or not claimed:
            return None
        callback = maybe_signature(request.chord, app=self.app)
        try:
            try:
                values = self._chord_header_values(group_id, join_timeout)
            except ChordError as exc:
                logger.exception("Chord %r raised: %r", group_id, exc)
                return self.chord_error_from_stack(callback, exc)
            except Exception as exc:  # noqa: BLE001 - any join failure fails the chord
                logger.exception("Chord %r raised: %r", group_id, exc)
                return self.chord_error_from_stack(
                    callback, _create_chord_error_with_cause(f"Join error: {exc!r}", exc))
            try:
                callback.delay(values)
            except Exception as exc:  # noqa: BLE001 - publishing failed: fail the callback
                logger.exception("Chord callback for %r raised: %r", group_id, exc)
                return self.chord_error_from_stack(
                    callback, _create_chord_error_with_cause(f"Callback error: {exc!r}", exc))
        finally:
            self._execute("finish_chord", {"group_id": group_id, "token": token,
                                           "done_seconds": CHORD_DONE_SECONDS})

    def _fail_expired_chord(self, request: Any, returned: int, sized: bool) -> Any:
        """Fail the callback of a chord that expired before its header completed: the first
        part to return after the expiry reports it, once."""
        callback = maybe_signature(request.chord, app=self.app)
        expires = self._chord_expires()
        exc = ChordError(
            f"Chord {request.group!r} expired before its header completed "
            f"({returned} part(s) had returned{'' if sized else ', size never set'}; "
            f"expiry {expires:g} s, result_chord_expires or result_expires): header part "
            f"{request.id!r} returned too late and callback {callback.id!r} does not run")
        logger.error("%s", exc)
        try:
            raise exc  # Celery records the failure from the exception being handled
        except ChordError:
            return self.chord_error_from_stack(callback, exc)

    def _chord_header_values(self, group_id: str, join_timeout: float) -> list[Any]:
        row = self._execute("chord_header", {"group_id": group_id}, fetch="one")
        if row is not None and row[0] is not None:
            header_result = result_from_tuple(self.decode(row[0])["result"], self.app)
            header_result.on_ready()  # every part is in: joining must not wait
            join = (header_result.join_native if header_result.supports_native_join
                    else header_result.join)
            with allow_join_result():
                return join(timeout=self.app.conf.result_chord_join_timeout, propagate=True)
        rows = self._execute("chord_parts", {"group_id": group_id}, fetch="all")
        return [self._unpack_chord_part(payload) for (payload,) in rows]

    def _unpack_chord_part(self, payload: bytes) -> Any:
        task_id, state, value = self.decode(payload)
        if state in states.EXCEPTION_STATES:
            value = self.exception_to_python(value)
        if state in states.PROPAGATE_STATES:
            raise _create_chord_error_with_cause(
                f"Dependency {task_id} raised {value!r}", value)
        return value

    # -- expiry ----------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Delete expired results, groups and chords (``celery.backend_cleanup``)."""
        for name in ("cleanup_results", "cleanup_groups", "cleanup_chords"):
            while True:
                if name == "cleanup_chords":  # a function: it returns its count
                    deleted = self._execute(name, {"batch": self.cleanup_batch}, fetch="one")[0]
                else:
                    deleted = self._execute(name, {"batch": self.cleanup_batch})
                if deleted < self.cleanup_batch:
                    break

    # -- security --------------------------------------------------------------------------

    def exception_to_python(self, exc: Any) -> BaseException | None:
        """Rebuild a stored exception without importing or calling anything unexpected
        (see :mod:`swf_celery.results.exceptions`)."""
        rebuilt = rebuild_exception(exc)
        return rebuilt if rebuilt is not None else super().exception_to_python(exc)


def _result_ids(sig: Any) -> list[str]:
    """Task ids whose results a caller waits on for signature dict ``sig`` (a group's
    children, a chain's last task, a chord's body, a task itself)."""
    if not isinstance(sig, dict):
        return []
    kind = sig.get("subtask_type")
    kwargs = sig.get("kwargs") or {}
    if kind == "group":
        return [i for child in kwargs.get("tasks") or () for i in _result_ids(child)]
    if kind == "chain":
        tasks = kwargs.get("tasks") or ()
        return _result_ids(tasks[-1]) if tasks else []
    if kind == "chord":
        return _result_ids(kwargs.get("body"))
    task_id = (sig.get("options") or {}).get("task_id")
    return [task_id] if isinstance(task_id, str) else []


def _option(options: dict[str, Any], name: str, kind: type, default: Any, *,
            minimum: float) -> Any:
    value = options.get(name, default)
    try:
        converted = kind(value)
    except (TypeError, ValueError):
        converted = None
    if converted is None or converted < minimum:
        raise ConfigurationError(
            f"result_backend_transport_options {name}={value!r}: expected a {kind.__name__} "
            f">= {minimum}")
    return converted
