"""Messaging: channel names, send_with_notify, notify_only and history on a real server."""

from __future__ import annotations

import psycopg
import pytest

import swf_celery
from swf_celery.errors import ChannelNameError, PayloadError, PayloadTooLarge
from swf_celery.messaging import channels

#: Names PostgreSQL carries as identifiers (quoted): accepted, mapped safely.
CARRIED = [
    "a;drop", "a;drop table x", '"quoted"', "it's", "café", "名前", "Orders", "1abc", "a b",
    "a-b", "swf_$x", "a:b.c-d", "x" * 63, "é" * 31,
]
#: Names that cannot be carried (or are the library's own): refused, naming why.
REFUSED = [("", "empty"), ("x" * 64, "64 bytes long; the limit is 63"),
           ("é" * 32, "64 bytes long"), ("a\x00b", "NUL"), ("swf:mine", "reserved")]


# -- names (no database) -----------------------------------------------------------------


@pytest.mark.parametrize(("name", "why"), REFUSED)
def test_names_that_cannot_be_carried_are_refused_with_the_reason(name: str, why: str) -> None:
    with pytest.raises(ChannelNameError, match="channel name") as info:
        channels.resolve(name)
    assert why in str(info.value)


@pytest.mark.parametrize("name", CARRIED)
def test_names_postgres_allows_map_to_valid_distinct_names(name: str) -> None:
    ch = channels.resolve(name)
    assert len(ch.notify_channel.encode()) <= 63
    assert ch.notify_channel.startswith(("swf_", "swf#"))
    assert len(ch.queue) == 47 and ch.queue == ch.queue.lower()  # hashed form
    if name.swapcase() != name:  # case matters: another channel, other names
        other = channels.resolve(name.swapcase())
        assert (other.notify_channel, other.queue) != (ch.notify_channel, ch.queue)


@pytest.mark.parametrize("name", [None, 5, b"orders"])
def test_non_string_channel_names_are_refused(name: object) -> None:
    with pytest.raises(ChannelNameError, match="must be a string"):
        channels.resolve(name)


def test_notify_channels_never_collide() -> None:
    names = ["a" * 59, "a" * 60, "a" * 61, "a" * 63, "a" * 62 + "b", "Orders", "orders"]
    # A 59-byte name that looks like a long name's NOTIFY channel after "swf_".
    names.append(channels.notify_channel("q" * 63)[4:])
    mapped = {channels.notify_channel(n) for n in names}
    assert len(mapped) == len(names)
    assert channels.resolve("a" * 59).notify_channel == "swf_" + "a" * 59
    assert channels.notify_channel(channels.WORKFLOW_EVENTS) == "swf_workflow_events"
    assert channels.resolve("swf:workflow_events") == channels.resolve("workflow_events")


def test_queue_names_fit_pgmq_and_never_collide() -> None:
    names = {"orders", "_x", "a" * 39, "a" * 40, "a" * 41, "a" * 59}
    # Names that share the first 29 characters must still get distinct queues.
    names |= {"p" * 29 + suffix for suffix in ("a" * 11, "b" * 11, "a" * 12, "a" * 30)}
    # A short name that looks exactly like a long name's queue suffix.
    long_queue = channels.queue_name("q" * 50)
    names.add(long_queue[len(channels.QUEUE_PREFIX):])
    queues = {channels.queue_name(n) for n in names}
    assert len(queues) == len(names)
    for n in names:
        q = channels.queue_name(n)
        assert len(q) <= 47 and q == q.lower() and q.startswith("swf_ch_")
        assert (len(q) <= 46) == (len(n) <= 39)  # the two forms differ in length
    assert channels.queue_name("Orders") != channels.queue_name("orders")
    assert channels.queue_name("orders") == "swf_ch_orders"


# -- send_with_notify / history ------------------------------------------------------------


def test_send_stores_message_and_history_reads_and_acknowledges(db_url: str) -> None:
    first = swf_celery.send_with_notify("orders", {"order": 1}, db_url)
    second = swf_celery.send_with_notify("orders", ["two", 2], db_url)
    third = swf_celery.send_with_notify("orders", "three", db_url)
    assert first < second < third

    msg = swf_celery.get_message("orders", second, db_url)
    assert msg is not None and msg.body == ["two", 2] and msg.channel == "orders"
    assert not msg.archived

    pending = swf_celery.read_pending("orders", db_url)
    assert [m.id for m in pending] == [first, second, third]
    assert [m.body for m in swf_celery.read_pending("orders", db_url, after_id=first,
                                                    limit=1)] == [["two", 2]]

    assert swf_celery.acknowledge("orders", [first, second], db_url) == [first, second]
    assert swf_celery.acknowledge("orders", first, db_url) == []  # twice is harmless
    assert [m.id for m in swf_celery.read_pending("orders", db_url)] == [third]
    archived = swf_celery.get_message("orders", first, db_url)
    assert archived is not None and archived.archived and archived.body == {"order": 1}

    assert swf_celery.acknowledge("orders", third, db_url, archive=False) == [third]
    assert swf_celery.get_message("orders", third, db_url) is None
    assert swf_celery.read_pending("orders", db_url) == []


def test_history_of_a_channel_never_used_is_empty(db_url: str) -> None:
    assert swf_celery.get_message("never_used", 1, db_url) is None
    assert swf_celery.read_pending("never_used", db_url) == []
    assert swf_celery.acknowledge("never_used", [1], db_url) == []


def test_channels_keep_their_messages_apart(db_url: str) -> None:
    long_a = "p" * 29 + "a" * 20
    long_b = "p" * 29 + "b" * 20
    swf_celery.send_with_notify(long_a, {"for": "a"}, db_url)
    swf_celery.send_with_notify(long_b, {"for": "b"}, db_url)
    assert [m.body for m in swf_celery.read_pending(long_a, db_url)] == [{"for": "a"}]
    assert [m.body for m in swf_celery.read_pending(long_b, db_url)] == [{"for": "b"}]


def test_big_message_goes_through_intact(db_url: str) -> None:
    body = {"blob": "é" * 1_000_000, "n": list(range(1000))}
    message_id = swf_celery.send_with_notify("big", body, db_url)
    msg = swf_celery.get_message("big", message_id, db_url)
    assert msg is not None and msg.body == body


def test_queue_owned_by_something_else_is_not_taken_over(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SELECT pgmq.create('swf_ch_taken')")
        conn.execute("SELECT pgmq.send('swf_ch_taken', '{\"celery\": true}')")
    with pytest.raises(ChannelNameError, match="does not belong to channel taken"):
        swf_celery.send_with_notify("taken", {"x": 1}, db_url)
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM pgmq.q_swf_ch_taken").fetchone()[0] == 1


def test_dropped_queue_is_recreated_on_next_send(db_url: str) -> None:
    swf_celery.send_with_notify("dropped", 1, db_url)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SELECT pgmq.drop_queue('swf_ch_dropped')")
    message_id = swf_celery.send_with_notify("dropped", 2, db_url)
    assert [m.id for m in swf_celery.read_pending("dropped", db_url)] == [message_id]


@pytest.mark.parametrize("name", ["x" * 100, "a\x00b", "swf:mine"])
def test_refused_names_are_refused_before_touching_the_database(db_url: str, name: str) -> None:
    for call in (lambda: swf_celery.send_with_notify(name, {}, db_url),
                 lambda: swf_celery.notify_only(name, "x", db_url),
                 lambda: swf_celery.listen(name, db_url),
                 lambda: swf_celery.read_pending(name, db_url)):
        with pytest.raises(ChannelNameError):
            call()
    with psycopg.connect(db_url) as conn:
        # only the engine's own events channel (migration 0020)
        assert conn.execute("SELECT array_agg(channel) FROM swf.channels").fetchone()[0] \
            == ["workflow_events"]


def test_messages_that_are_not_json_are_refused(db_url: str) -> None:
    with pytest.raises(PayloadError, match="not JSON-serialisable"):
        swf_celery.send_with_notify("orders", {"when": object()}, db_url)
    with pytest.raises(PayloadError, match="NUL"):
        swf_celery.send_with_notify("orders", {"s": "a\x00b"}, db_url)
    # An escaped backslash followed by "u0000" is ordinary text, not a NUL.
    message_id = swf_celery.send_with_notify("orders", {"s": "\\u0000"}, db_url)
    assert swf_celery.get_message("orders", message_id, db_url).body == {"s": "\\u0000"}


def test_the_former_engine_events_name_is_listen_only(db_url: str) -> None:
    with pytest.raises(ChannelNameError, match="reserved"):
        swf_celery.send_with_notify("swf:workflow_events", {}, db_url)
    with pytest.raises(ChannelNameError, match="reserved"):
        swf_celery.notify_only("swf:workflow_events", "{}", db_url)


@pytest.mark.parametrize("name", ["workflow_events", "Orders", "a:b.c-d", "a;drop table x",
                                  "名前", "x" * 63])
def test_seed_style_channels_carry_messages_with_ids(db_url: str, name: str) -> None:
    """As in the seed's examples: send_with_notify + listen on a channel, including
    "workflow_events" (the engine's events channel, which applications may send on too)."""
    with swf_celery.listen(name, db_url) as listener:
        message_id = swf_celery.send_with_notify(name, {"type": "approval"}, db_url)
        note = listener.get(timeout=10)
    assert note is not None and note.message_id == message_id
    assert swf_celery.get_message(name, message_id, db_url).body == {"type": "approval"}
    other = "orders" if name == "Orders" else name + "_other" if len(name) < 60 else "y"
    assert swf_celery.read_pending(other, db_url) == []  # nothing leaked to another channel


# -- notify_only payload limits (checked before sending) ---------------------------------


def test_notify_only_refuses_8000_bytes_and_more(db_url: str) -> None:
    with pytest.raises(PayloadTooLarge, match="8001 bytes; PostgreSQL accepts at most 7999"):
        swf_celery.notify_only("orders", "x" * 8001, db_url)
    with pytest.raises(PayloadTooLarge, match="8000 bytes"):
        swf_celery.notify_only("orders", "é" * 4000, db_url)  # bytes, not characters
    with pytest.raises(PayloadTooLarge):
        swf_celery.notify_only("orders", {"k": "x" * 8000}, db_url)
    swf_celery.notify_only("orders", "x" * 7999, db_url)  # the largest Postgres takes


def test_notify_only_refuses_reserved_form_and_nul(db_url: str) -> None:
    with pytest.raises(PayloadError, match="stored message"):
        swf_celery.notify_only("orders", {"swf_message_id": 5}, db_url)
    with pytest.raises(PayloadError, match="NUL"):
        swf_celery.notify_only("orders", "a\x00b", db_url)
    with pytest.raises(PayloadError, match="stored message"):  # the engine events' form
        swf_celery.notify_only("orders", {"swf_message_id": 5, "other": 1}, db_url)
    swf_celery.notify_only("orders", {"swf_message_id": "5", "other": 1}, db_url)


def test_package_import_stays_cheap() -> None:
    import subprocess
    import sys

    code = ("import sys, swf_celery; "
            "print(any(m in sys.modules for m in "
            "('swf_celery.messaging.send', 'swf_celery.messaging.listen')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
    assert callable(swf_celery.listen) and "send_with_notify" in dir(swf_celery)
