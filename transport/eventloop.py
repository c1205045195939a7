"""The consume loop inside an event loop (Celery's worker hub), as kombu's Redis transport has.

Celery gives a worker its asynchronous prefork pool only when the broker transport runs in the
worker's hub (``implements.asynchronous``). :class:`HubConsumer` does the transport's part:

- the self-pipe of :class:`~swf_celery.transport.wakeup.Wakeup` (poked by acks, ``basic_qos``
  and new consumers) and its NOTIFY descriptor (readable when the LISTEN connection's own
  reading thread has NOTIFYs from producers, or a report of missed ones) are hub readers;
- a NOTIFY runs :meth:`HubConsumer.drain` at once;
- a drain reads only the queues that may hold messages (*dirty* ones), one after the other,
  each read a job of the :class:`~swf_celery.transport.reader.Reader` thread: the hub
  delivers what it returns when it is done and meanwhile feeds the pool. A queue is dirty
  when it is first consumed, when its channel is NOTIFYed, when a read filled the batch it
  asked for, when the prefetch window kept it from being read, and when a timer or
  ``swf.queue_arm`` says a message is due. A read that returns less than it asked for
  leaves the queue clean. So under load a drain is one statement, the read of the task
  queue, which also deletes that queue's pending acks; the pidbox queue is read when a
  control message arrives, not on every drain;
- at the end of a pass, the queues read short and those clean before are armed, in the
  reader thread as well, so the arm is over while the pool starts the job just delivered,
  before the next publish (a publish that commits during an arm waits on its lock); then
  the consumer waits for the hub. The consumer sleeps on them (``swf.queue_sleep``): a
  message wakes one of the consumers asleep on its queue, in turn, with a NOTIFY on that
  consumer's own channel, and the consumer stays asleep (no statement per wake-up) until a
  read comes back empty (it sleeps again: the answer says when a delayed message is due)
  or fills its batch (a backlog: ``swf.queue_wake_up``, producers stop waking it while it
  reads). Without its LISTEN session's pid (reconnecting) it marks them instead
  (``swf.queue_arm``: every listener of the queue is woken). A queue is armed whatever its
  prefetch room: woken for a queue it cannot read now (the window is full, or it no longer
  consumes the queue), the consumer keeps the queue to read when a slot frees, stops
  sleeping on it and passes the wake-up on to the next sleeper (``swf.queue_pass_wake``),
  so a message never waits on a consumer that cannot take it while another could;
- a consumer asleep with a claim time (transport option ``hand_over``) gets the message its
  wake-up is for inside the NOTIFY, claimed for it by the producer's commit
  (:mod:`.handover`): it is delivered with no read, or given back and the wake-up passed
  on when no channel can take it now; a handed message that fills the prefetch window
  ends the sleep on its queue, as a read that fills it does;
- an ack that frees prefetch room for a queue left unread for want of it starts the next
  read from the hub's next iteration (as kombu's Redis transport issues its next ``BRPOP``),
  once the worker is down to :data:`WAITING_ENOUGH` tasks not started (or the window is that
  free): a busy worker reads several messages a statement, not one per ack;
- a read held back that way is looked at again shortly after (:data:`FOLLOW_UP`, then
  twice as late each time up to :data:`HELD_READ_MAX_WAIT`): the tasks it waited for start
  without a poke, and the slots they free are filled then, not at the next ack;
- what may wait a moment runs :data:`FOLLOW_UP` seconds later, after the hub's next poll:
  any other drain a poke asks for (acks, ``basic_qos``, a new consumer), so the acks of
  tasks accepted together are written in one statement;
- a hub timer stands in for the sleep of the synchronous loop: the moment the next delayed
  or hidden message becomes due, or a read of every consumed queue: each
  ``sweep_interval`` (30 s) while the LISTEN connection is up (NOTIFYs, requeues included,
  and the listener's reported gaps say which queues to read meanwhile, so an idle worker
  on 1,000 queues makes no statement between sweeps), each ``polling_interval`` (1 s)
  without wake-ups, while that connection is down, or while a consumed queue is limited
  (flow keys: a slot or a token comes back without a NOTIFY);
- Celery's ``worker_shutting_down`` signal (sent by the worker's SIGTERM, SIGINT and SIGQUIT
  handlers) pokes the self-pipe: the hub's poll, which the signal interrupts but Python
  resumes for the rest of its timeout (up to the polling fallback), returns at once, so the
  worker starts its shutdown when the signal arrives.

Reads and arms never block the hub; the rare statements of a delivery (dead-lettering,
revoked ids of redelivered messages, revokes by stamped header for a batch holding stamped
messages) are short ones in the hub, so a SIGTERM, a control command or a finished task is
handled at once.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
from functools import partial
from time import monotonic
from typing import TYPE_CHECKING, Any

from celery.signals import worker_shutting_down

from swf_celery.db import load_queries
from swf_celery.transport import handover
from swf_celery.transport.deliveries import Delivery, ReadRows
from swf_celery.transport.handover import Handed
from swf_celery.transport.names import listen_channel
from swf_celery.transport.reader import Reader

if TYPE_CHECKING:
    from swf_celery.transport.channel import Channel
    from swf_celery.transport.transport import Transport

logger = logging.getLogger(__name__)

QUERIES = load_queries("swf_celery.transport")
#: Seconds a deferred drain waits: long enough for one hub poll, short against a round trip.
FOLLOW_UP = 0.001
#: Seconds an ack may wait, when no read is due, for the next read of its queue to carry it,
#: or to be written with the acks that follow it in one statement: a worker handed its
#: messages with their wake-ups reads nothing between tasks. A redelivery after a crash is
#: possible only inside it (as for any ack not yet written).
ACK_DELAY = 0.05
#: What an ack flush run by the reader thread returns (not the rows of a read).
_FLUSHED = object()


#: Tasks a worker holds not yet started: while it holds this many, a read waits until all
#: but this many slots of its prefetch window are free, so that a busy worker reads in
#: batches (one statement for six messages in a window of eight, not one per ack).
WAITING_ENOUGH = 2
#: Seconds between looks at a read held back by :data:`WAITING_ENOUGH`: the first look
#: comes :data:`FOLLOW_UP` after it, each next one twice as late, up to this. A task that
#: starts sends no poke (a thread pool starts it in its own thread), so without a look the
#: slots it leaves free would stay empty until the next ack: a pool of 16 threads with
#: 100 ms tasks lost a fifth of its time so.
HELD_READ_MAX_WAIT = 0.064
#: Most queues one sleep (``swf.queue_sleep``) takes: a worker on 1,000 queues whose pass left
#: most of them to arm sleeps on them in steps, and a wake-up for a queue armed already is
#: read between two steps, not after one statement over all of them (1.5-2 s in the reader
#: thread, which a read waits for). A queue not armed yet is read by the step that arms it
#: when a message came meanwhile (the sleep says one is visible).
ARM_STEP = 50
#: Longest the hub's poll sleeps between the sweeps: Celery's loop sees a stop asked for
#: without a signal (a worker embedded in a process, ``celery.contrib.testing.worker``, the
#: ``celery_worker`` fixture) within this long. A tick with nothing to do runs no statement.
HUB_TICK = 1.0


def _requests() -> tuple[int, int]:
    """(received, started) task requests this Celery worker holds; (0, 0) outside one."""
    state = sys.modules.get("celery.worker.state")
    if state is None:
        return 0, 0
    return (len(getattr(state, "reserved_requests", ())),
            len(getattr(state, "active_requests", ())))


def _worker_idle() -> bool:
    """True when this Celery worker runs and holds no task (or outside a worker)."""
    return _requests() == (0, 0)


def _tasks_waiting() -> int:
    """Tasks this Celery worker received and has not started yet (0 outside a worker)."""
    received, started = _requests()
    return max(0, received - started)


def _worth_reading(channel: Channel, qty: int) -> bool:
    """Read ``qty`` messages now? Yes, unless the worker still has :data:`WAITING_ENOUGH`
    tasks to start and fewer than all but that many slots of the prefetch window are free:
    then the read waits for more room (each ack pokes), and one read brings several
    messages instead of one read per ack (each a statement for the worker and the
    database). An idle worker, long tasks with ``task_acks_late`` (running, not waiting)
    and channels without a window (the control queue's) read at once."""
    window = channel.qos.prefetch_count or 0
    if qty >= max(1, window - WAITING_ENOUGH):
        return True
    return _tasks_waiting() < WAITING_ENOUGH


class HubConsumer:
    """Drives one transport's consumers from a kombu hub (``loop``)."""

    def __init__(self, transport: Transport, loop: Any) -> None:
        self.transport = transport
        self.loop = loop
        self._thread = threading.get_ident()  # the hub's (it registers the transport)
        self._fds: set[int] = set()
        self._timer: Any = None
        self._timer_due = 0.0
        self._closed = False
        #: Consumed queues that may hold messages; the rest are read after a NOTIFY.
        self._dirty: set[str] = set()
        #: Consumed queues by their NOTIFY channel (queues not seen yet are dirty).
        self._channel_queue: dict[str, str] = {}
        self._known: set[str] = set()
        #: Queues armed (``swf.queue_arm``) and not NOTIFYed since: not armed again.
        self._armed: set[str] = set()
        #: Consumed queues this consumer was woken for alone and has not read since: the
        #: wake-up is passed on when it cannot read them (:meth:`_pass_wake`).
        self._woken: set[str] = set()
        self._next_due: float | None = None  # monotonic time the last arm said a message is due
        self._last_sweep = monotonic()  # the last read of every consumed queue
        self._ack_timer: Any = None
        #: The pass under way: the (channel, queue) still to look at, what it found.
        self._pass: list[tuple[Channel, str]] = []
        self._pass_delivered = False
        self._pass_clean: list[str] = []
        self._pass_drained: list[str] = []
        #: The read in the reader thread: (channel, queue, no_ack, rows asked for).
        self._in_flight: tuple[Channel, str, bool, int] | None = None
        #: The queues being armed in the reader thread.
        self._arming: list[str] | None = None
        self._again = False  # a drain was asked for while a read was in flight
        #: Seconds until the next look at a read held back for want of room (0: none held).
        self._held_wait = 0.0
        self._pass_held = False  # this pass held a read back (:func:`_worth_reading`)
        self._drain_next = False  # a drain is due at the hub's next iteration
        self._reader = Reader()
        loop.add_reader(self._reader.fd, self._on_read_done)
        self._rotation = 0  # the channel a drain starts with
        #: Per channel (by id), the queue it read last: a pass starts with the next one, so
        #: that a queue with a backlog never takes every freed slot from the others.
        self._last_read: dict[int, str] = {}
        wakeup = transport.wakeup()
        self._add_reader(wakeup.pipe_fd)
        if wakeup.notify_fd is not None:
            self._add_reader(wakeup.notify_fd)
        worker_shutting_down.connect(self._on_shutting_down)
        self.soon()

    # -- hub callbacks ----------------------------------------------------------------------

    def on_readable(self, fd: int) -> None:
        """A NOTIFY (drain now) or a poke (drain after the next poll) arrived."""
        wakeup = self.transport._wakeup
        if wakeup is None:
            return
        wakeup.consume(fd)
        if fd == wakeup.pipe_fd:
            self.soon()
        else:
            self.drain()

    def _on_shutting_down(self, **_: Any) -> None:
        """The worker was told to stop (in its signal handler, in the hub's thread): wake the
        hub's poll, so that the loop sees the stop now, not when the poll times out."""
        wakeup = self.transport._wakeup
        if not self._closed and wakeup is not None:
            wakeup.poke()  # the self-pipe: a write is what ends the poll (not :meth:`soon`)

    def in_loop_thread(self) -> bool:
        """True in the hub's thread (where Celery acks), while this consumer is open."""
        return not self._closed and threading.get_ident() == self._thread

    def poked(self) -> None:
        """An ack or ``basic_qos`` in the hub's thread freed prefetch room: a queue left
        unread for want of room (dirty) is read from the hub's next iteration on (in the
        reader thread, as a read under way ends), as kombu's Redis transport issues its
        next ``BRPOP`` at once; otherwise a drain follows after :data:`FOLLOW_UP`, so the
        acks of tasks accepted together are written in one statement."""
        if self._closed:
            return
        if not self._dirty:
            self.soon()
        elif not self._drain_next:
            self._drain_next = True
            self._next_iteration(self._drain_now)

    def _drain_now(self) -> None:
        self._drain_next = False
        self.drain()

    def soon(self) -> None:
        """Run :meth:`drain` in :data:`FOLLOW_UP` seconds, unless it is due sooner."""
        if self._closed:
            return
        due = monotonic() + FOLLOW_UP
        if self._timer is not None and self._timer_due <= due:
            return
        self._cancel_timer()
        self._timer = self.loop.call_later(FOLLOW_UP, self.drain)
        self._timer_due = due

    def _listening(self) -> bool:
        """True when NOTIFYs say which queues to read: wake-ups on, the LISTEN connection
        up, and no consumed queue limited (a key's slot freed by another worker's ack, or a
        token come back, is found by the polling fallback)."""
        wakeup = self.transport._wakeup
        if not (self.transport.options.wakeups and wakeup is not None and wakeup.listening()):
            return False
        storages = self.transport._storages
        return not any(s.limited for q in self._known if (s := storages.get(q)) is not None)

    def _on_timer(self) -> None:
        """A due message, the sweep, or the polling fallback (without a LISTEN connection):
        read (and then arm) every consumed queue; otherwise read the dirty ones."""
        now = monotonic()
        due = self._next_due is not None and now >= self._next_due - 0.002
        sweep = now - self._last_sweep >= self.transport.options.sweep_interval
        if due or sweep or not self._listening():
            self._dirty.update(self._known)
            self._armed.clear()
            self._next_due = None
            self._last_sweep = now
        elif not self._dirty:
            self._set_timer(held=False)  # a tick (:data:`HUB_TICK`): nothing to read
            return
        self.drain()

    def _flush_acks(self) -> None:
        self._ack_timer = None
        if self._closed:
            return
        # In the reader thread too (after a statement under way): the hub stays free.
        self._reader.submit(self._flush_job)

    def _flush_job(self) -> object:
        try:
            self.transport.flush_acks()
        except Exception as exc:  # noqa: BLE001 - the read after it reports the connection
            logger.warning("swf broker: acks not written (%s); their messages may be "
                           "delivered again", exc)
        return _FLUSHED

    # -- the consume step -------------------------------------------------------------------

    def drain(self) -> None:
        """Start a pass: each dirty queue is read once (in the reader thread, one after the
        other, delivered by the hub), then the clean ones not armed yet are armed; when
        nothing was delivered, the fallback timer (or the next due message's) is set."""
        if self._closed:
            return
        self._cancel_timer()
        self._take_notified()
        if self._in_flight is not None or self._pass or self._arming is not None:
            self._again = True  # a new pass once this one ends
            return
        transport = self.transport
        channels = [ch for ch in list(transport.channels) if ch._consumers]
        if not channels:
            transport.flush_acks()
            return  # nothing consumes: a new consumer pokes the pipe
        self._rotation = (self._rotation + 1) % len(channels)
        channels = channels[self._rotation:] + channels[:self._rotation]
        self._pass = [(ch, q) for ch in channels for q in self._rotated(ch)]
        self._pass_delivered = False
        self._pass_held = False
        self._pass_clean = []  # clean before this pass: armed now unless armed already
        self._pass_drained = []  # read short now: armed at the end of this pass
        self._step()

    def _step(self) -> None:
        """Send the next dirty queue of the pass to the reader, or end the pass."""
        while self._pass:
            channel, queue = self._pass.pop(0)
            if queue not in self._dirty:
                self._pass_clean.append(queue)
                continue
            if channel.connection is None or not channel._consumers:
                continue  # closed meanwhile
            qty = channel._read_quantity()
            if qty <= 0:
                if queue in self._woken:
                    self._woken.discard(queue)
                    self._armed.discard(queue)
                    self._pass_wake(listen_channel(channel.pgmq_name(queue)))
                continue  # no prefetch room: stays dirty, a freed slot pokes
            if not _worth_reading(channel, qty):
                self._pass_held = True  # little room: stays dirty, looked at again soon
                continue
            noack = queue in channel._noack_queues
            if _worker_idle():
                # Nothing for the hub to do meanwhile: read here, without the two thread
                # hand-offs (the round trip of a lone task, a control command).
                self._took(channel, queue, noack, qty, self._read(channel, queue, noack, qty))
                continue
            self._in_flight = (channel, queue, noack, qty)
            self._reader.submit(partial(self._read, channel, queue, noack, qty))
            return
        self._end_pass()

    def _read(self, channel: Channel, queue: str, noack: bool, qty: int) -> ReadRows:
        """The reader thread's job: one read (with its queue's pending acks)."""
        return channel.read_rows(queue, noack, qty)

    def _on_read_done(self) -> None:
        """A read or an arm finished: deliver the messages and go on with the pass, or
        finish the pass."""
        for rows, error in self._reader.take():
            if rows is _FLUSHED:
                continue
            if self._in_flight is not None:
                in_flight, self._in_flight = self._in_flight, None
                if error is not None:
                    self._pass = []
                    raise error  # the hub hands it to Celery (a connection error reconnects)
                self._took(*in_flight, rows)
                if not self._closed:
                    self._step()
            elif self._arming is not None:
                queues, self._arming = self._arming, None
                if error is not None:
                    raise error
                if not self._closed:
                    self._after_arm(self._took_arm(queues, rows))

    def _took(self, channel: Channel, queue: str, noack: bool, qty: int,
              rows: ReadRows) -> None:
        """Deliver the rows of a read; a read short of ``qty`` leaves its queue clean."""
        if self._closed or channel.connection is None:
            self._restore(channel, queue, noack, rows)
            return
        woken = queue in self._woken
        self._woken.discard(queue)
        if rows.none_visible and woken and queue in self._armed:
            # Asleep, woken, nothing to read (another consumer took it, or it is delayed):
            # still asleep, at the back of the line where the wake-up put it, so no new
            # sleep; the read said when the next message is due. (One visible but not
            # read is another reader's right now: sleeping again says when to look.)
            self._expect_due(rows.due)
        elif not rows:
            # Nothing to read and not asleep on the queue: sleep again, which also says
            # when the next message is due.
            self._armed.discard(queue)
        elif len(rows) >= qty and queue in self._armed:
            self._wake_up(queue)
        for name, payload in channel.payloads(queue, noack, rows):
            self.transport._deliver(payload, name)
        self._held_wait = 0.0
        if rows:
            self._pass_delivered = True
            self._last_read[id(channel)] = queue
        if len(rows) < qty:
            self._dirty.discard(queue)
            self._pass_drained.append(queue)

    def _expect_due(self, due: float | None) -> None:
        """Read every queue again in ``due`` seconds (a delayed or hidden message becomes
        visible then), unless a read is due sooner already."""
        if due is None:
            return
        at = monotonic() + max(0.0, due)
        self._next_due = at if self._next_due is None else min(self._next_due, at)

    def _end_pass(self) -> None:
        """Arm the queues found clean (in the reader thread), then :meth:`_after_arm`."""
        transport = self.transport
        # Queues read short in this pass are armed with those already clean; a queue still
        # dirty (a full batch) is read again first. While a busy queue is read, the others
        # (the pidbox queue) stay armed, so that a control command NOTIFYs. A queue is armed
        # whatever its prefetch room: its NOTIFY only marks it dirty, and a freed slot pokes
        # the loop.
        to_arm = sorted(set(self._pass_clean + self._pass_drained) - self._armed
                        - self._dirty)
        if to_arm and transport.options.wakeups:
            if len(to_arm) > ARM_STEP:
                # The rest in the passes that follow at once (clean, they read nothing).
                to_arm = to_arm[:ARM_STEP]
                self._again = True
            # Off the hub, at once: the pool gets the job just delivered meanwhile, and the
            # arm is over before the next publish (whose commit would wait on its lock).
            self._arming = to_arm
            self._reader.submit(partial(self._arm, to_arm))
            return
        self._after_arm()

    def _arm(self, queues: list[str]) -> float | None:
        """The reader thread's job: sleep on ``queues`` (``swf.queue_sleep``), or mark them
        (``swf.queue_arm``) while the LISTEN session's pid is unknown; seconds until a
        message is due (0: one arrived before the arm), None when none waits."""
        wakeup = self.transport._wakeup
        sleeper = self.transport.sleeper()
        options = self.transport.options
        conn = self.transport.pg_connection()
        if sleeper is None:
            row = conn.execute(QUERIES["arm"], {"queues": queues}).fetchone()
        else:
            row = conn.execute(QUERIES["sleep"], {
                "queues": queues, "channel": sleeper[0], "pid": sleeper[1],
                "claim_ms": handover.claim_ms(options.visibility_timeout)
                if options.hand_over else None,
                "key": wakeup.key if options.hand_over and wakeup is not None else None,
            }).fetchone()
        return row[0] if row else None

    def _wake_up(self, queue: str) -> None:
        """Stop sleeping on ``queue``: a read filled its batch, so the consumer reads it again
        at once, and producers need not wake it (once per backlog)."""
        self._armed.discard(queue)
        self._about_sleep("wake_up", {"queues": [queue]},
                          f"still asleep on {queue} (a wake-up then only marks it)")

    def _pass_wake(self, name: str) -> None:
        """Woken for queue channel ``name`` and unable to read it (no prefetch room, or no
        longer consumed): stop sleeping on it and wake the next consumer asleep on it."""
        self._about_sleep("pass_wake", {"channel": name},
                          f"a wake-up for {name} not passed on (its consumers read it at "
                          "their next sweep)")

    def _about_sleep(self, query: str, params: dict[str, Any], failed: str) -> None:
        """Run ``query`` about this consumer's sleep (its own channel added), a short
        statement in the hub that never waits on a lock; ``failed`` is logged if it fails."""
        wakeup = self.transport._wakeup
        if wakeup is None:
            return
        try:
            self.transport.pg_connection().execute(QUERIES[query],
                                                   {**params, "sleeper": wakeup.channel})
        except Exception as exc:  # noqa: BLE001 - logged; the sweep reads every queue
            logger.warning("swf broker: %s (%s)", failed, exc)

    def _took_arm(self, queues: list[str], due: float | None) -> bool:
        """Record an arm; True when a message arrived before it (read again)."""
        if due is not None and due <= 0:
            self._dirty.update(queues)
            return True
        # A queue NOTIFYed while its arm was under way (a send after the arm used the mark
        # up), or made dirty by missed NOTIFYs (a gap), is not armed: the drain that marked
        # it asked for another pass, which reads it and arms it again.
        self._armed.update(q for q in queues if q not in self._dirty)
        self._expect_due(due)  # other queues' due times (an empty read's) stay
        return False

    def _after_arm(self, arrived: bool = False) -> None:
        """After a pass that delivered (or found a message at its arm), read the dirty
        queues again at once; after one asked for meanwhile, run another; else wait for
        the hub (a NOTIFY, a poke, the ack timer or the fallback timer). A dirty queue
        without prefetch room waits for the poke of a freed slot."""
        transport = self.transport
        again, self._again = self._again, False
        if self._pass_delivered or arrived or again:
            if self._dirty:
                # The hub feeds the pool while the reader waits on the next statement.
                self._next_iteration(self.drain)
                return
            if again:
                self.soon()
                return
        if any(ch._pending_acks for ch in list(transport.channels)) and self._ack_timer is None:
            self._ack_timer = self.loop.call_later(ACK_DELAY, self._flush_acks)
        self._set_timer(held=self._pass_held)

    def _set_timer(self, *, held: bool) -> None:
        """The hub timer: the sweep (or the polling fallback), the next due message, a read
        held back (``held``), whichever comes first, and at most :data:`HUB_TICK` away."""
        transport = self.transport
        wait = transport.polling_interval or 1.0
        if self._listening():
            wait = max(0.0, self._last_sweep + transport.options.sweep_interval - monotonic())
        if self._next_due is not None:
            wait = max(0.0, min(wait, self._next_due - monotonic() + 0.002))
        if held:
            self._held_wait = min(HELD_READ_MAX_WAIT, max(FOLLOW_UP, self._held_wait * 2))
            wait = min(wait, self._held_wait)
        wait = min(wait, HUB_TICK)
        self._timer = self.loop.call_later(wait, self._on_timer)
        self._timer_due = monotonic() + wait

    def _restore(self, channel: Channel, queue: str, noack: bool, rows: list[Any]) -> None:
        """Rows read for a consumer that is gone: visible again at once."""
        if noack or not rows or channel.connection is None:
            return  # a no-ack read removed them, as a delivery would have
        try:
            channel.reject([Delivery(queue, r[0], r[1]) for r in rows], requeue=True,
                           reason="restored")
        except Exception:  # noqa: BLE001 - the connection is gone
            logger.warning("swf broker: %d messages read as the consumer stopped reappear "
                           "after their visibility timeout", len(rows))

    def _rotated(self, channel: Channel) -> list[str]:
        """The queues ``channel`` consumes, starting after the one it read last (none
        starves the others); a queue seen for the first time is dirty."""
        queues = channel.consuming()
        for queue in queues:
            if queue not in self._known:
                self._known.add(queue)
                self._dirty.add(queue)
                self._channel_queue[listen_channel(channel.pgmq_name(queue))] = queue
        last = self._last_read.get(id(channel))
        if len(queues) > 1 and last in queues:
            start = queues.index(last) + 1
            queues = queues[start:] + queues[:start]
        return queues

    def _take_notified(self) -> None:
        """Mark the queues whose channels were NOTIFYed dirty (all, for a channel not known,
        and after NOTIFYs may have been missed: a reconnect, a full buffer, skipped ones)."""
        wakeup = self.transport._wakeup
        if wakeup is None:
            return
        if wakeup.take_missed():
            self._dirty.update(self._known)
            self._armed.clear()
        for name in wakeup.take_notified():
            queue = self._channel_queue.get(name)
            if queue is None:
                self._dirty.update(self._known)
                self._armed.clear()
            else:
                self._dirty.add(queue)
                self._armed.discard(queue)
        for name in wakeup.take_woken():
            queue = self._channel_queue.get(name)
            if queue is None or self._consumer_of(queue) is None:
                self._pass_wake(name)  # a queue this consumer left
                continue
            self._woken.add(queue)
            self._dirty.add(queue)  # still asleep on it (armed): read, no new sleep
        for handed in wakeup.take_handed():
            self._take_handed(handed)

    def _consumer_of(self, queue: str) -> Channel | None:
        """The open channel consuming ``queue``, or None."""
        return next((ch for ch in list(self.transport.channels)
                     if ch.connection is not None and queue in ch.consuming()), None)

    def _take_handed(self, handed: Handed) -> None:
        """Deliver a message handed over with its wake-up, with no read, when a channel
        consumes its queue (with acks) and has room; else give it back and pass the wake-up
        on (a queue still consumed stays to read when a slot frees)."""
        queue = self._channel_queue.get(handed.channel)
        channel = self._consumer_of(queue) if queue is not None else None
        if (self._closed or channel is None or queue is None
                or queue in channel._noack_queues or channel._read_quantity() <= 0):
            if queue is not None and channel is not None:
                self._dirty.add(queue)
            self._about_sleep("give_back", {
                "channel": handed.channel, "msg_id": handed.msg_id,
                "receipt": handed.receipt}, f"message {handed.msg_id} handed over on "
                f"{handed.channel} not given back (visible again in "
                f"{handover.CLAIM:g} s)")
            return
        for name, payload in channel.payloads(queue, False, [handed.row()]):
            self.transport._deliver(payload, name)
        self.transport.handed_over()
        if channel._read_quantity() <= 0 and queue in self._armed:
            # The window is full, as after a read that filled it: awake, and the queue is
            # read when a slot frees (the read that comes back short sleeps again).
            self._wake_up(queue)
            self._dirty.add(queue)

    # -- bookkeeping ------------------------------------------------------------------------

    def close(self) -> None:
        """Leave the hub: readers, tick callback and timer removed."""
        self._closed = True
        worker_shutting_down.disconnect(self._on_shutting_down)
        self._cancel_timer()
        ack_timer, self._ack_timer = self._ack_timer, None
        if ack_timer is not None:
            with contextlib.suppress(Exception):
                ack_timer.cancel()
        for fd in list(self._fds):
            self._remove_reader(fd)
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self._reader.fd)
        wakeup = self.transport._wakeup
        for handed in wakeup.take_handed() if wakeup is not None else []:
            self._take_handed(handed)  # closed: given back at once
        in_flight, self._in_flight = self._in_flight, None
        self._pass = []
        self._arming = None
        for rows, error in self._reader.close():
            if in_flight is not None and error is None:
                self._restore(in_flight[0], in_flight[1], in_flight[2], rows)

    def _next_iteration(self, callback: Any) -> None:
        """Run ``callback`` before the hub's next poll. A zero-delay timer, not
        ``call_soon``: the hub runs what ``call_soon`` adds while it runs its ready
        callbacks (where a thread pool's acks arrive) only after its next poll, which
        waits for the next event: an ack there left free slots unread for tens of ms."""
        self.loop.call_later(0, callback)

    def _cancel_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            with contextlib.suppress(Exception):
                timer.cancel()

    def _add_reader(self, fd: int) -> None:
        self.loop.add_reader(fd, self.on_readable, fd)
        self._fds.add(fd)

    def _remove_reader(self, fd: int) -> None:
        self._fds.discard(fd)
        with contextlib.suppress(Exception):
            self.loop.remove_reader(fd)
