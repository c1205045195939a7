"""A message handed over with its wake-up: claimed for the sleeping consumer by the producer's
commit and sent in the NOTIFY, so the consumer delivers it with no read.

Nothing is lost on the way: a consumer that gets a hand-over and never takes it (killed, its
connection cut) leaves the message claimed only for its claim time; a consumer that cannot
take it gives it back, unspent, and the next sleeper is woken; a message the NOTIFY cannot
carry wakes the consumer to read, as before. A task running longer than the claim is not
delivered twice: the worker's keeper extends the claim.
"""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import pytest
from celery import Celery
from psycopg.types.json import Jsonb

from swf_celery.transport import handover
from tests.helpers import (
    kombu_message,
    pg_url,
    read_queue,
    run_hub_until,
    sql,
    task_runs,
    wait_until,
    worker_process,
)

APP = "tests.transport.broker_app"


def _send(url: str, tag: str, *, delay: int = 0, **headers: Any) -> int:
    message = kombu_message(tag)
    message["headers"].update(headers)
    return int(sql(url, "SELECT swf.queue_send('jobs', %s, %s)", (Jsonb(message), delay))[0][0])


def _state(url: str, msg_id: int) -> tuple[int, bool]:
    """(read_ct, visible now) of a message of 'jobs'."""
    table = sql(url, "SELECT 'pgmq.' || quote_ident('q_' || pgmq_name) FROM swf.queues "
                     "WHERE name = 'jobs'")[0][0]
    return sql(url, f"SELECT read_ct, vt <= clock_timestamp() FROM {table} "  # noqa: S608
                    "WHERE msg_id = %s", (msg_id,))[0]


def test_the_message_comes_with_the_wake_up_and_is_claimed_for_the_claim_time(
        db_url: str, sleepers: Any) -> None:
    pgmq = sql(db_url, "SELECT pgmq_name FROM swf.queue_ensure('jobs')")[0][0]
    a = sleepers("swfw_00000000000000a1")
    a.sleep_on("jobs", 600)

    msg_id = _send(db_url, "t-1")

    (handed,) = a.woken()
    assert (handed["q"], handed["id"], handed["r"]) == (f"swfq_{pgmq}", msg_id, 1)
    assert handed["m"]["headers"]["id"] == "t-1"
    assert _state(db_url, msg_id) == (1, False)  # claimed: no read finds it
    assert read_queue(db_url, "jobs") == []
    # Never taken (the consumer died, its connection was cut): visible again after the claim.
    time.sleep(0.7)
    assert [r[0] for r in read_queue(db_url, "jobs")] == [msg_id]


def test_a_consumer_that_cannot_take_it_gives_it_back_and_the_next_one_is_woken(
        db_url: str, sleepers: Any) -> None:
    pgmq = sql(db_url, "SELECT pgmq_name FROM swf.queue_ensure('jobs')")[0][0]
    a, b = sleepers("swfw_00000000000000a2"), sleepers("swfw_00000000000000b2")
    a.sleep_on("jobs", 60_000)
    b.sleep_on("jobs", 60_000)
    msg_id = _send(db_url, "t-1")
    (handed,) = a.woken()

    sql(db_url, "SELECT swf.queue_pass_wake(%s, %s, %s, %s)",
        (handed["q"], a.channel, handed["id"], handed["r"]))

    assert _state(db_url, msg_id) == (0, True)  # given back unspent: no delivery counted
    assert b.woken() == [f"swfq_{pgmq}"]  # woken to read it
    # A give-back whose receipt is not the message's changes nothing.
    (b_read,) = read_queue(db_url, "jobs")
    sql(db_url, "SELECT swf.queue_pass_wake(%s, %s, %s, %s)",
        (handed["q"], a.channel, msg_id, b_read[1] + 1))
    assert _state(db_url, msg_id) == (b_read[1], False)


def test_one_hand_over_per_sleeper_and_the_rest_is_read(db_url: str, sleepers: Any) -> None:
    pgmq = sql(db_url, "SELECT pgmq_name FROM swf.queue_ensure('jobs')")[0][0]
    a, b = sleepers("swfw_00000000000000a3"), sleepers("swfw_00000000000000b3")
    a.sleep_on("jobs", 60_000)
    b.sleep_on("jobs", 60_000)
    with psycopg.connect(db_url, autocommit=True) as conn, conn.transaction():
        ids = [conn.execute("SELECT swf.queue_send('jobs', %s)",
                            (Jsonb(kombu_message(f"t-{i}")),)).fetchone()[0] for i in range(5)]
    got_a, got_b = a.woken(), b.woken()
    assert [p["id"] for p in got_a if isinstance(p, dict)] == [ids[0]]
    assert [p["id"] for p in got_b if isinstance(p, dict)] == [ids[1]]
    assert f"swfq_{pgmq}" in got_a  # the first sleeper reads what was left
    assert [r[0] for r in read_queue(db_url, "jobs")] == ids[2:]


@pytest.mark.parametrize("case", ["delayed", "too long", "flow key", "no claim"])
def test_what_a_notify_cannot_carry_wakes_the_consumer_to_read(db_url: str, sleepers: Any,
                                                               case: str) -> None:
    pgmq = sql(db_url, "SELECT pgmq_name FROM swf.queue_ensure('jobs')")[0][0]
    a = sleepers("swfw_00000000000000a4")
    a.sleep_on("jobs", None if case == "no claim" else 60_000)
    if case == "delayed":
        msg_id = _send(db_url, "t-1", delay=1)
    elif case == "too long":
        msg_id = _send(db_url, "t-1", padding="x" * 8000)
    elif case == "flow key":
        msg_id = _send(db_url, "t-1", swf_flow={"key": "k", "limits": {"concurrency": 1}})
    else:
        msg_id = _send(db_url, "t-1")
    assert a.woken() == [f"swfq_{pgmq}"]
    assert _state(db_url, msg_id)[0] == 0  # not claimed


@pytest.mark.parametrize(("claim", "key", "error"), [
    (0, "0" * 32, "claim_ms"), (1000, "not hex", "32 hex digits"),
    (1000, "'; DROP TABLE swf.queues; --", "32 hex digits")])
def test_a_claim_and_a_key_are_checked(db_url: str, claim: int, key: str, error: str) -> None:
    sql(db_url, "SELECT swf.queue_ensure('jobs')")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=error):
        sql(db_url, "SELECT swf.queue_sleep(ARRAY['jobs'], 'swfw_00000000000000a5', "
                    "pg_backend_pid(), %s, %s)", (claim, key))


def test_a_forged_hand_over_is_never_taken_for_a_message(connections: Any,
                                                         db_url: str) -> None:
    # Anyone who can connect may NOTIFY a worker's channel. A payload that looks like a
    # hand-over but is not signed with the worker's key delivers nothing; it makes the
    # worker read its queues (a wasted read), and a real message still comes.
    from kombu import Consumer, Queue
    from kombu.asynchronous import Hub

    conn = connections(polling_interval=60, sweep_interval=60, hand_over=True)
    producer = connections()
    hub = Hub()
    conn.transport.register_with_event_loop(conn.connection, hub)
    consumer = conn.transport._hub
    wakeup = conn.transport.wakeup()
    got: list[Any] = []
    queue = Queue("forged")
    try:
        with Consumer(conn.default_channel, [queue], callbacks=[
                lambda body, message: got.append(body)], accept=["json"]):
            run_hub_until(hub, lambda: "forged" in consumer._armed, "asleep")
            pgmq = sql(db_url, "SELECT pgmq_name FROM swf.queues WHERE name = 'forged'")[0][0]
            message = kombu_message("evil")
            body = json.dumps({"q": f"swfq_{pgmq}", "id": 1, "r": 1, "p": 0, "m": message})
            before = wakeup.notifications
            for sig in ("0" * 64, handover.signature("f" * 32, body)):
                sql(db_url, "SELECT pg_notify(%s, %s)", (wakeup.channel, sig + body))
            run_hub_until(hub, lambda: wakeup.notifications >= before + 2
                          and "forged" in consumer._armed and consumer._arming is None
                          and consumer._in_flight is None and not consumer._pass,
                          "the forged wake-ups read the queue, and the consumer sleeps again")
            assert got == [] and conn.transport.handovers == 0
            producer.Producer().publish("real", serializer="json", routing_key="forged")
            run_hub_until(hub, lambda: got == ["real"], "the real message")
    finally:
        hub.close()


@pytest.mark.slow
def test_a_task_longer_than_the_claim_runs_once_on_two_workers(broker: str,
                                                               client: Celery) -> None:
    # Two idle workers asleep, accepting hand-overs (claim: 5 s). A task of 8 s is handed
    # to one; its keeper extends the claim, so the other worker never gets it.
    env = {"SWF_TEST_BROKER": broker, "SWF_TEST_POLL": "60", "SWF_TEST_SWEEP": "60",
           "SWF_TEST_HAND_OVER": "true"}
    url = pg_url(broker)

    def asleep() -> int:
        return int(sql(url, "SELECT count(DISTINCT s.channel) FROM swf.queue_sleepers s "
                            "JOIN swf.queues q ON q.id = s.queue_id WHERE q.name = 'celery' "
                            "AND s.claim_ms IS NOT NULL")[0][0])

    with worker_process(APP, env=env, concurrency=1, hostname="one@handover") as one, \
            worker_process(APP, env=env, concurrency=1, hostname="two@handover") as two:
        wait_until(lambda: asleep() == 2, 30, "both workers asleep", proc=one)
        started = time.monotonic()
        client.send_task("slow", args=["long", 8])
        wait_until(lambda: task_runs(url, "long"), 5, "the task started at once", proc=two)
        assert time.monotonic() - started < 2
        client.send_task("record", args=["quick"])  # the other worker is free for it
        wait_until(lambda: task_runs(url, "quick"), 5, "the second task ran", proc=one)
        wait_until(lambda: ("long", "done") in task_runs(url, "long"), 20, "the long task",
                   proc=one)
        time.sleep(1)
    assert task_runs(url, "long") == [("long", "start"), ("long", "done")]



def test_the_event_loop_delivers_a_handed_message_without_a_read(connections: Any) -> None:
    from kombu import Consumer, Queue
    from kombu.asynchronous import Hub

    conn = connections(polling_interval=60, sweep_interval=60, hand_over=True)
    producer = connections()
    hub = Hub()
    conn.transport.register_with_event_loop(conn.connection, hub)
    consumer = conn.transport._hub
    got: list[Any] = []
    first, second = Queue("handed-1"), Queue("handed-2")
    try:
        with Consumer(conn.default_channel, [first, second], callbacks=[
                lambda body, message: got.append((body, message))], accept=["json"]):
            conn.default_channel.basic_qos(0, 1, False)
            run_hub_until(hub, lambda: {"handed-1", "handed-2"} <= consumer._armed, "asleep")
            producer.Producer().publish("a", serializer="json", routing_key="handed-1",
                                        declare=[first, second])
            run_hub_until(hub, lambda: len(got) == 1, "a delivered")
            assert conn.transport.handovers == 1  # in the wake-up: no read
            assert got[0][1].delivery_info["swf_receipt"] == 1

            # The window (1) is full; the consumer still sleeps on the second queue. Its
            # message, handed over, is given back unspent and read once a is acked.
            producer.Producer().publish("b", serializer="json", routing_key="handed-2")
            run_hub_until(hub, lambda: "handed-2" in consumer._dirty, "b given back")
            assert [body for body, _ in got] == ["a"] and conn.transport.handovers == 1
            got[0][1].ack()
            run_hub_until(hub, lambda: len(got) == 2, "b read after the ack")
            assert got[1][0] == "b" and got[1][1].delivery_info["swf_receipt"] == 1
            got[1][1].ack()
    finally:
        hub.close()


@pytest.mark.slow
def test_a_message_handed_over_before_a_server_restart_runs_after_it(
        private_server: Any) -> None:
    # The consumer the message was handed to never takes it: the server restarts (its
    # LISTEN session ends). The claim was committed with the message, so after the restart
    # the message is hidden only until the claim ends, and a worker started then runs it.
    from tests.helpers import create_task_runs, swf_url
    from tests.transport.conftest import Sleeper

    url = private_server.url
    create_task_runs(url)
    sql(url, "SELECT swf.queue_ensure('celery')")
    sleeper = Sleeper(url, "swfw_00000000000000a6")
    sleeper.sleep_on("celery", 2000)
    broker = swf_url(url)
    client = Celery("client", broker=broker, set_as_current=False)
    try:
        client.send_task("record", args=["handed"])
        (handed,) = sleeper.woken()
        assert handed["m"]["headers"]["task"] == "record"
        sleeper.conn.close()
        private_server.restart()
        with worker_process(APP, env={"SWF_TEST_BROKER": broker, "SWF_TEST_POLL": "1"},
                            concurrency=1) as proc:
            wait_until(lambda: task_runs(url, "handed"), 30, "the handed task ran",
                       proc=proc)
    finally:
        client.close()
    assert task_runs(url, "handed") == [("handed", "done")]
