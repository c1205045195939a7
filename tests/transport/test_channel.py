"""The swf:// transport through kombu's API, on a real PostgreSQL (no workers yet)."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import psycopg
import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue
from psycopg.types.json import Jsonb

import swf_celery  # noqa: F401 - registers swf://
from swf_celery.errors import ConfigurationError
from swf_celery.transport import Transport
from tests.helpers import drain, next_visible, pg_url, publish, sql


def test_scheme_is_registered_and_pgmq_alias_untouched() -> None:
    from kombu.transport import TRANSPORT_ALIASES, resolve_transport

    assert resolve_transport("swf") is Transport
    assert TRANSPORT_ALIASES["pgmq"] == "kombu.transport.pgmq:Transport"


def test_broker_transport_class_path_with_postgresql_url(db_url: str) -> None:
    conn = Connection(db_url, transport="swf_celery.transport:Transport")
    q = Queue("plain", Exchange("plain"), "plain")
    publish(conn, q, {"n": 1})
    assert [b for b, _ in drain(conn, q, expect=1)] == [{"n": 1}]
    conn.release()


def test_bad_option_is_named() -> None:
    with pytest.raises(ConfigurationError, match="visibility_timeout"):
        _ = Connection("swf://localhost/x",
                       transport_options={"visibility_timeout": "soon"}).transport


def test_publish_consume_ack_size_purge(connections: Any, broker_url: str) -> None:
    conn = connections()
    q = Queue("gpu_workers", Exchange("gpu_workers"), "gpu_workers")
    for i in range(3):
        publish(conn, q, {"i": i})
    assert q(conn.channel()).declare() == "gpu_workers"
    assert conn.channel().queue_declare("gpu_workers", passive=True).message_count == 3
    got = drain(conn, q, expect=3)
    assert [b["i"] for b, _ in got] == [0, 1, 2]
    assert sql(broker_url, "SELECT swf.queue_size('gpu_workers')") == [(0,)]
    for i in range(4):
        publish(conn, q, {"i": i})
    assert q(conn.channel()).purge() == 4
    assert sql(broker_url, "SELECT swf.queue_size('gpu_workers')") == [(0,)]


def test_unacked_message_is_restored_when_the_consumer_closes(connections: Any) -> None:
    first, second = connections(), connections()
    q = Queue("restore", Exchange("restore"), "restore")
    publish(first, q, {"x": 1})
    assert len(drain(first, q, expect=1, ack=False)) == 1
    first.release()  # closes the channel: unacked message made visible at once
    assert [b for b, _ in drain(second, q, expect=1)] == [{"x": 1}]


def test_reject_requeue_and_dead_letter(connections: Any, broker_url: str) -> None:
    conn = connections()
    q = Queue("rej", Exchange("rej"), "rej")
    publish(conn, q, {"x": "again"})
    [(_, message)] = drain(conn, q, expect=1, ack=False)
    message.reject(requeue=True)
    [(body, message)] = drain(conn, q, expect=1, ack=False)
    assert body == {"x": "again"} and message.delivery_info["redelivered"]
    message.reject(requeue=False)
    assert drain(conn, q, expect=1, timeout=0.5) == []
    dead = sql(broker_url, "SELECT reason, read_ct FROM swf.queue_dead_letters('rej')")
    assert dead == [("rejected", 2)]


def test_message_delivered_too_often_is_dead_lettered(connections: Any, broker_url: str) -> None:
    conn = connections(max_deliveries=2)
    q = Queue("loop", Exchange("loop"), "loop")
    publish(conn, q, {"x": 1})
    for _ in range(2):
        [(_, message)] = drain(conn, q, expect=1, ack=False)
        message.reject(requeue=True)
    assert drain(conn, q, expect=1, timeout=0.5) == []
    assert sql(broker_url, "SELECT reason FROM swf.queue_dead_letters('loop')") == [
        ("delivered more than 2 times",)]


def test_malformed_bodies_are_dead_lettered_and_good_ones_flow(connections: Any,
                                                              broker_url: str) -> None:
    conn = connections()
    q = Queue("mixed", Exchange("mixed"), "mixed")
    q(conn.channel()).declare()
    good = {"body": '{"ok": true}', "content-type": "application/json",
            "content-encoding": "utf-8", "headers": {},
            "properties": {"delivery_info": {}, "delivery_tag": "t1"}}
    bad_json = dict(good, body="{not json")
    bad_b64 = dict(good, properties={"body_encoding": "base64", "delivery_info": {}})
    bad_b64["body"] = "%%%"
    with psycopg.connect(pg_url(broker_url), autocommit=True) as c:
        pgmq_name = c.execute("SELECT pgmq_name FROM swf.queues WHERE name = 'mixed'").fetchone()[0]
        for raw in ([1, 2], {"no": "properties"}, bad_json, bad_b64, good):
            c.execute("SELECT pgmq.send(%s, %s)", [pgmq_name, Jsonb(raw)])
    got = drain(conn, q, expect=1)
    assert [b for b, _ in got] == [{"ok": True}]
    reasons = [r[0] for r in sql(broker_url, "SELECT reason FROM swf.queue_dead_letters('mixed')")]
    assert len(reasons) == 4 and all(r.startswith("malformed") for r in reasons)


def test_priorities_zero_first(connections: Any) -> None:
    conn = connections()
    q = Queue("prio", Exchange("prio"), "prio")
    for name, pri in [("low", 9), ("mid", 5), ("high", 0), ("low2", 9)]:
        publish(conn, q, {"n": name}, priority=pri)
    assert [b["n"] for b, _ in drain(conn, q, expect=4)] == ["high", "mid", "low", "low2"]


def test_properties_json_cannot_carry_are_left_out_as_amqp_does(connections: Any) -> None:
    # kombu passes extra publish keywords on as properties; py-amqp sends only AMQP's own
    # and drops the rest, so such a publish (Celery's own canvas test passes a Signal)
    # must not fail here. What JSON can carry is kept, as on kombu's Redis transport.
    conn = connections()
    direct = Queue("props", Exchange("props"), "props")
    fanout = Queue("props-fanout", Exchange("props-fanout", type="fanout"))
    fanout(conn.channel()).declare()
    for q in (direct, fanout):
        publish(conn, q, {"n": 1}, correlation_id="c1", custom={"kept": [1]},
                signal=object(), nan=float("nan"))
        [(body, message)] = drain(conn, q, expect=1)
        assert body == {"n": 1}
        assert message.properties["correlation_id"] == "c1"
        assert message.properties["custom"] == {"kept": [1]}
        assert "signal" not in message.properties and "nan" not in message.properties


def test_fanout_reaches_queues_bound_in_other_processes(connections: Any) -> None:
    consumer_a, consumer_b, producer = connections(), connections(), connections()
    fx = Exchange("bcast", type="fanout")
    qa, qb = Queue("worker-a.pidbox", fx), Queue("worker-b.pidbox", fx)
    qa(consumer_a.channel()).declare()
    qb(consumer_b.channel()).declare()
    # The producer never declared the queues: bindings come from PostgreSQL.
    Producer(producer.channel()).publish({"ping": 1}, exchange=fx, declare=[fx])
    assert [b for b, _ in drain(consumer_a, qa, expect=1)] == [{"ping": 1}]
    assert [b for b, _ in drain(consumer_b, qb, expect=1)] == [{"ping": 1}]


def test_direct_reply_routing_across_connections(connections: Any) -> None:
    client, server = connections(), connections()
    rx = Exchange("reply.test", type="direct")
    reply_q = Queue("abc.reply.test", rx, routing_key="ticket-1")
    reply_q(client.channel()).declare()
    Producer(server.channel()).publish({"pong": 1}, exchange=rx, routing_key="ticket-1",
                                       declare=[rx])
    assert [b for b, _ in drain(client, reply_q, expect=1)] == [{"pong": 1}]


def test_bindings_are_read_again_for_a_queue_bound_since_and_once_when_nothing_is_bound(
        connections: Any) -> None:
    client, server = connections(), connections()
    rx = Exchange("reply.twice", type="direct")
    Queue("one.reply.twice", rx, routing_key="ticket-1")(client.channel()).declare()
    channel = server.channel()
    reads: list[str] = []
    execute = channel._execute

    def counting(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "bindings":
            reads.append(name)
        return execute(name, *args, **kwargs)

    channel._execute = counting  # type: ignore[method-assign]
    producer = Producer(channel)
    producer.publish({"n": 1}, exchange=rx, routing_key="ticket-1", declare=[rx])
    assert len(reads) == 1
    # Bound in another process while this one's table is cached: found by a fresh read.
    reply_2 = Queue("two.reply.twice", rx, routing_key="ticket-2")
    reply_2(client.channel()).declare()
    producer.publish({"n": 2}, exchange=rx, routing_key="ticket-2")
    assert len(reads) == 2
    assert [b for b, _ in drain(client, reply_2, expect=1)] == [{"n": 2}]
    # An exchange nobody consumes (a worker's heartbeat to celeryev): one read a lookup.
    events = Exchange("celeryev.none", type="topic")
    producer.publish({"type": "worker-heartbeat"}, exchange=events,
                     routing_key="worker.heartbeat", declare=[events])
    assert len(reads) == 3


def test_idle_consumer_is_woken_by_notify_not_polling(connections: Any) -> None:
    consumer = connections(polling_interval=120)
    producer = connections()
    q = Queue("wake", Exchange("wake"), "wake")
    q(consumer.channel()).declare()
    got: list[Any] = []
    with Consumer(consumer.channel(), [q], callbacks=[lambda b, m: (got.append(b), m.ack())]):
        with pytest.raises(TimeoutError):  # arms the wake-up: nothing there yet
            consumer.drain_events(timeout=0.3)
        publish(producer, q, {"w": 1})
        consumer.drain_events(timeout=60)  # returns long before the 120 s poll
    assert got == [{"w": 1}]


def test_far_eta_waits_in_postgres_and_revoke_deletes_it(connections: Any,
                                                         broker_url: str) -> None:
    conn = connections()
    q = Queue("later", Exchange("later"), "later")
    eta = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2)).isoformat()
    publish(conn, q, {"x": 1}, headers={"id": "task-1", "eta": eta})
    publish(conn, q, {"x": 2}, headers={"id": "task-2"})
    assert [b for b, _ in drain(conn, q, expect=2, timeout=1)] == [{"x": 2}]
    wait = next_visible(broker_url, "later")  # seconds until the held-back message is due
    assert 7000 < wait <= 7200
    assert sql(broker_url, "SELECT swf.queue_size('later')") == [(1,)]
    # celery control revoke broadcasts on the pidbox fanout exchange: the message goes too.
    from celery import Celery

    app = Celery(broker=broker_url)
    app.control.revoke("task-1")
    assert sql(broker_url, "SELECT swf.queue_size('later')") == [(0,)]


def test_held_message_is_extended_beyond_the_visibility_timeout(connections: Any) -> None:
    holder = connections(visibility_timeout=1)
    other = connections(visibility_timeout=1)
    q = Queue("held", Exchange("held"), "held")
    publish(holder, q, {"x": 1})
    got = drain(holder, q, expect=1, ack=False)
    assert len(got) == 1
    # Three visibility timeouts later the holder's keeper has extended it all along.
    assert drain(other, q, expect=1, timeout=3) == []
    got[0][1].ack()  # written by the holder's keeper: the holder never reads again
    assert drain(other, q, expect=1, timeout=2.5) == []


def test_unconsumed_expiring_queue_is_dropped_and_skipped_by_fanout(connections: Any,
                                                                    broker_url: str) -> None:
    conn = connections()
    fx = Exchange("bcast2", type="fanout")
    live, gone = Queue("live.pidbox", fx), Queue("dead.pidbox", fx, expires=0.5)
    live(conn.channel()).declare()
    gone(conn.channel()).declare()
    time.sleep(1.0)  # nobody consumed "dead.pidbox" for longer than its x-expires
    Producer(conn.channel()).publish({"ping": 1}, exchange=fx, declare=[fx])
    assert sql(broker_url, "SELECT swf.queue_size('dead.pidbox')") == [(0,)]
    assert sql(broker_url, "SELECT swf.queue_reap()") == [(1,)]
    assert sql(broker_url, "SELECT name FROM swf.queues ORDER BY name") == [("live.pidbox",)]
    assert [b for b, _ in drain(conn, live, expect=1)] == [{"ping": 1}]
