"""Transient queues (x-expires / auto_delete): rows in one shared table, never DDL."""

from __future__ import annotations

from typing import Any

from kombu import Consumer, Exchange, Producer, Queue

import swf_celery  # noqa: F401 - registers swf://
from swf_celery.transport.visibility import VisibilityKeeper
from tests.helpers import drain, publish, sql, sql_value, wait_until


def catalog_top(url: str) -> int:
    """The newest relation oid: unchanged as long as no table, index or sequence is created."""
    return int(sql_value(url, "SELECT max(oid::bigint) FROM pg_class"))


def expire(url: str, queue: str) -> None:
    """Make ``queue`` look unused for longer than its expiry, then reap."""
    sql(url, "UPDATE swf.queues SET last_active = now() - interval '1 day' WHERE name = %s",
        (queue,))
    sql(url, "SELECT swf.queue_reap()")


def test_expiring_and_auto_delete_queues_create_no_relation(connections: Any,
                                                            broker_url: str) -> None:
    conn = connections()
    publish(conn, Queue("durable", Exchange("durable"), "durable"), {"warm": 1})
    top = catalog_top(broker_url)
    reply = Queue("abc.reply.celery.pidbox", Exchange("reply.celery.pidbox"), "abc",
                  auto_delete=True, expires=10)
    direct = Queue("w1@host.dq2", Exchange("C.dq2"), "w1@host", auto_delete=True)
    events = Queue("celeryev.1234", Exchange("celeryev", type="topic"), "worker.#",
                   auto_delete=True, durable=False, expires=60)
    for q in (reply, direct, events):
        q(conn.channel()).declare()
    rows = dict(sql(broker_url, "SELECT name, expires_ms FROM swf.queues "
                                "WHERE pgmq_name LIKE 't\\_%'"))
    assert rows == {"abc.reply.celery.pidbox": 10000, "w1@host.dq2": 600000,
                    "celeryev.1234": 60000}
    publish(conn, reply, {"pong": 1})
    assert [b for b, _ in drain(conn, reply, expect=1)] == [{"pong": 1}]
    conn.channel().queue_delete(reply.name)
    assert catalog_top(broker_url) == top


def test_transient_queue_keeps_broker_semantics(connections: Any, broker_url: str) -> None:
    conn = connections()
    q = Queue("node1.celery.pidbox", Exchange("node1", type="direct"), "node1",
              auto_delete=True, expires=30, max_priority=9)
    for i, priority in enumerate([5, 0, 5]):
        publish(conn, q, {"i": i}, priority=priority)
    assert conn.channel().queue_declare(q.name, passive=True).message_count == 3
    # Priority 0 first, then FIFO; reject/requeue makes it visible again at once.
    bound = q(conn.channel())
    first = bound.get(no_ack=False, accept=["json"])
    assert first.decode() == {"i": 1}
    assert sql_value(broker_url, "SELECT swf.queue_size(%s)", (q.name,)) == 2
    first.reject(requeue=True)
    assert [b["i"] for b, _ in drain(conn, q, expect=3)] == [1, 0, 2]
    conn.transport.flush_acks()
    assert sql_value(broker_url, "SELECT count(*) FROM swf.transient_messages") == 0
    # Reject without requeue: a dead letter with its reason.
    publish(conn, q, {"bad": 1})
    bound.get(no_ack=False, accept=["json"]).reject(requeue=False)
    assert sql(broker_url, "SELECT reason FROM swf.queue_dead_letters(%s)",
               (q.name,)) == [("rejected",)]
    for i in range(4):
        publish(conn, q, {"i": i})
    assert q(conn.channel()).purge() == 4


def test_fanout_to_transient_queues_and_extension(connections: Any, broker_url: str) -> None:
    a, b, producer = connections(), connections(), connections()
    fx = Exchange("bcast.pidbox", type="fanout")
    qa = Queue("a@host.celery.pidbox", fx, auto_delete=True, expires=10)
    qb = Queue("b@host.celery.pidbox", fx, auto_delete=True, expires=10)
    qa(a.channel()).declare()
    qb(b.channel()).declare()
    Producer(producer.channel()).publish({"ping": 1}, exchange=fx, declare=[fx])
    held = drain(a, qa, expect=1, ack=False)
    assert [body for body, _ in held] == [{"ping": 1}]
    assert [body for body, _ in drain(b, qb, expect=1)] == [{"ping": 1}]
    before = sql_value(broker_url, "SELECT vt FROM swf.transient_messages")
    assert VisibilityKeeper(a.transport, 120, 40).tick(force=True) == 1
    assert sql_value(broker_url, "SELECT vt FROM swf.transient_messages") > before


def test_publisher_drops_messages_for_an_expired_queue(connections: Any,
                                                      broker_url: str) -> None:
    monitor, worker = connections(), connections()
    events = Exchange("celeryev", type="topic")
    q = Queue("celeryev.abcd", events, "worker.#", auto_delete=True, expires=60)
    q(monitor.channel()).declare()
    producer = Producer(worker.channel(), exchange=events)
    producer.publish({"type": "worker-heartbeat"}, routing_key="worker.heartbeat",
                     declare=[events])
    assert sql_value(broker_url, "SELECT swf.queue_size(%s)", (q.name,)) == 1
    expire(broker_url, q.name)
    assert sql(broker_url, "SELECT 1 FROM swf.queues WHERE name = %s", (q.name,)) == []
    top = catalog_top(broker_url)
    # Within the publisher's binding cache the expired queue is still listed: the message
    # is dropped, the queue is not recreated (with no bindings and no expiry).
    producer.publish({"type": "worker-heartbeat"}, routing_key="worker.heartbeat")
    producer.publish({"type": "worker-heartbeat"}, routing_key="worker.heartbeat")
    producer.channel.connection.forget_queue(q.name)  # a publisher that never cached it
    producer.channel._put(q.name, {"body": "x", "headers": {}, "properties": {}})
    assert sql(broker_url, "SELECT 1 FROM swf.queues WHERE name = %s", (q.name,)) == []
    assert sql_value(broker_url, "SELECT count(*) FROM swf.transient_messages") == 0
    assert catalog_top(broker_url) == top


def test_expired_queue_of_any_name_is_not_recreated_by_a_publisher(
        connections: Any, broker_url: str) -> None:
    consumer, publisher = connections(), connections()
    ex = Exchange("jobs", type="direct")
    q = Queue("my_auto_delete", ex, "job", auto_delete=True)
    q(consumer.channel()).declare()
    producer = Producer(publisher.channel(), exchange=ex)
    producer.publish({"n": 1}, routing_key="job")
    expire(broker_url, q.name)
    for n in (2, 3):  # still listed by the publisher's binding cache
        producer.publish({"n": n}, routing_key="job")
    assert sql(broker_url, "SELECT 1 FROM swf.queues WHERE name = %s", (q.name,)) == []


def test_consumer_declares_its_expired_queue_again_with_bindings(connections: Any,
                                                                broker_url: str) -> None:
    worker, client = connections(), connections()
    fx = Exchange("celery.pidbox", type="fanout")
    q = Queue("w9@host.celery.pidbox", fx, auto_delete=True, expires=10)
    got: list[Any] = []
    with Consumer(worker.channel(), [q], callbacks=[lambda body, m: got.append(body)],
                  no_ack=True, accept=["json"]):
        # The worker stalled longer than the expiry: another process reaped its queue.
        expire(broker_url, q.name)
        assert sql(broker_url, "SELECT 1 FROM swf.queue_bindings WHERE queue = %s",
                   (q.name,)) == []
        VisibilityKeeper(worker.transport, 30, 10).tick()
        assert sql(broker_url, "SELECT exchange FROM swf.queue_bindings WHERE queue = %s",
                   (q.name,)) == [("celery.pidbox",)]
        Producer(client.channel()).publish({"method": "ping"}, exchange=fx, declare=[fx],
                                           serializer="json")
        while not got:
            worker.drain_events(timeout=5)
    assert got == [{"method": "ping"}]


def test_a_stalled_consumer_keeps_its_queue_and_the_broadcasts_sent_meanwhile(
        connections: Any, broker_url: str) -> None:
    worker, client = connections(), connections()
    fx = Exchange("celery.pidbox", type="fanout")
    q = Queue("w8@host.celery.pidbox", fx, auto_delete=True, expires=10)
    got: list[Any] = []
    with Consumer(worker.channel(), [q], callbacks=[lambda body, m: got.append(body)],
                  no_ack=True, accept=["json"]):
        transport = worker.transport
        transport.wakeup()
        wait_until(lambda: transport.sleeper() is not None, what="the LISTEN session")
        VisibilityKeeper(transport, 30, 10).tick()  # marks the queue with that session
        assert sql_value(broker_url, "SELECT consumer_pid FROM swf.queues WHERE name = %s",
                         (q.name,)) == transport.sleeper()[1]
        # The worker stops (SIGSTOP, a paused VM) for longer than the expiry; a revoke is
        # broadcast meanwhile. Its session is still connected: the queue stays, as a
        # RabbitMQ queue with a consumer does, and the broadcast waits in it.
        Producer(client.channel()).publish({"method": "revoke"}, exchange=fx, declare=[fx],
                                           serializer="json")
        expire(broker_url, q.name)
        assert sql(broker_url, "SELECT 1 FROM swf.queues WHERE name = %s", (q.name,)) == [(1,)]
        while not got:
            worker.drain_events(timeout=5)
    assert got == [{"method": "revoke"}]
    worker.release()  # the worker is gone: its session ends, and the queue expires

    def reaped() -> bool:
        expire(broker_url, q.name)
        return not sql(broker_url, "SELECT 1 FROM swf.queues WHERE name = %s", (q.name,))

    wait_until(reaped, what="the queue of a consumer whose session ended to be reaped")
