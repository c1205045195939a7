"""The ``swf://`` kombu transport: Celery's broker in PostgreSQL, over pgmq.

Connection string
=================

.. code-block:: text

    swf://USER:PASSWORD@HOST:PORT/DATABASE[?LIBPQ_PARAMETERS]
    swf://postgres@127.0.0.1:5432/app
    swf://worker:secret@db-host/app?sslmode=verify-full&sslrootcert=/etc/ssl/db-ca.pem

Query parameters are libpq's (``sslmode``, ``sslrootcert``, ``target_session_attrs``,
``application_name``, ``connect_timeout``…) and reach every connection the transport opens,
the LISTEN connection of wake-ups included.

``import swf_celery`` registers the scheme with kombu (kombu has no entry point for
transports; the ``celery`` command imports it through our ``celery.commands`` entry point).
Equivalently, set ``broker_transport = "swf_celery.transport:Transport"`` and give a
``postgresql://`` URL. The database must be migrated (``swf-celery migrate``).

Transport options (``broker_transport_options``)
================================================

* ``visibility_timeout`` (60): seconds a delivered message stays hidden. The worker extends
  the messages it holds every third of it, so a long task is never delivered twice; a dead
  worker's messages reappear after this long.
* ``max_deliveries`` (10): a message delivered more often goes to the dead-letter store
  (0: no limit).
* ``wakeups`` (True): idle consumers LISTEN and producers wake them (coalesced: only while a
  consumer waits). False: poll every ``polling_interval``.
* ``polling_interval`` (1.0): seconds between polls when nothing woke the consumer (without
  wake-ups, or while the LISTEN connection is down).
* ``sweep_interval`` (30.0): with wake-ups, seconds between reads of every consumed queue in
  the worker's event loop, a safety net; meanwhile NOTIFYs, the listener's reported gaps
  and due messages say which queues to read.
* ``eta_threshold`` (30): an ETA/countdown further away than this many seconds is stored as a
  pgmq delay (waits in PostgreSQL, runs once); nearer ones wait in worker memory, extended.
* ``read_batch`` (100): most messages per read when the prefetch window is unlimited; reads
  otherwise fill the prefetch window in one query.
* ``archive_acked`` (False): acknowledged messages are archived instead of deleted.
* ``durable_publish`` (False): each publish waits for its WAL flush. Off, publishes commit
  asynchronously like the consumer side (whose lost writes only mean a redelivery): a clean
  restart loses nothing, a server or machine crash may lose the last few hundred ms of
  publishes. Recording a revoke and dead-lettering always commit synchronously.

* ``hand_over`` (False): in the event loop, a sleeping consumer gets the message its wake-up
  is for inside the NOTIFY, claimed for it by the producer's commit, and delivers it with
  no read (:mod:`~swf_celery.transport.handover`). Off: woken, it reads. Opt-in: task
  messages then travel in NOTIFY payloads (docs/transport.md, "Hand-over").
* ``event_loop`` (True): run in Celery's worker event loop (asynchronous prefork pool, as on
  Redis). False: kombu's synchronous consume loop (Celery then uses its plain pool).

Guarantees
==========

* At-least-once: a message is deleted only on ack (use ``task_acks_late`` for tasks).
* Deliveries are fenced: ack, reject, requeue and extension match the message id and the
  delivery's receipt (its ``read_ct``), so a consumer whose visibility timeout lapsed cannot
  touch the message's next delivery (:mod:`~swf_celery.transport.deliveries`).
* Reject with requeue: visible again at once. Reject without requeue, malformed bodies and
  messages over ``max_deliveries``: dead-lettered (``swf.dead_letters``, with the reason,
  committed synchronously; ``swf.queue_dead_letters(queue)``).
* Priorities 0..9, 0 first (as on Redis); FIFO within a priority.
* Fanout/topic/direct bindings are shared by all processes (``swf.queue_bindings``):
  ``celery inspect``/``control``/``events`` work. A revoke also deletes the task's queued or
  delayed message and is recorded (``swf.revoked_tasks``, committed synchronously), so it
  holds across worker restarts and server crashes (:mod:`~swf_celery.transport.revokes`).
  A ``revoke_by_stamped_headers`` broadcast is recorded too (``swf.revoked_stamps``) and
  applied by each worker before it hands over a stamped message and when it starts.
* Runs in Celery's event loop (``implements.asynchronous``; asynchronous prefork pool);
  held messages are visible again at once when a worker stops.
* Any queue name works, mapped to a safe pgmq name (``swf.queues``); names that cannot be
  stored faithfully (empty, control characters, over 255 UTF-8 bytes) raise
  :class:`~swf_celery.errors.QueueNameError`.
* Connection loss raises ``connection_errors`` so kombu/Celery reconnect with backoff.
"""

from swf_celery.transport.channel import Channel
from swf_celery.transport.transport import Transport

__all__ = ["Channel", "Transport"]
