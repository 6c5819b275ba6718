"""Idempotency-Key: a repeated POST /events gets the first answer and stores nothing again, within the window, also
after a restart or a kill -9 between the tries; the same key with another body is refused."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import pytest

from ingest.delivery.idempotency import IdempotencyKeys, KeyInUse, KeyReused, fingerprint, key_id

from .harness.engine import count, count_rows
from .harness.events import event
from .harness.polling import eventually
from .harness.service import Service


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _answer(keys: IdempotencyKeys, ident: bytes, body: bytes = b"[1]", status: int = 202) -> list:
    record = keys.record(ident, fingerprint(body), status, b'{"accepted":1,"rejected":[]}')
    keys.remember(record)
    return record


# --- the key table -------------------------------------------------------------------------------------------------

def test_a_key_is_held_while_answered_then_gives_its_first_answer_for_the_same_body_only():
    keys = IdempotencyKeys(3600, 10, clock=Clock())
    ident, body = key_id("", "k-1"), b"[1]"
    assert keys.begin(ident, fingerprint(body)) is None
    with pytest.raises(KeyInUse):
        keys.begin(ident, fingerprint(body))
    _answer(keys, ident, body)
    assert keys.begin(ident, fingerprint(body)) == (fingerprint(body), 202, b'{"accepted":1,"rejected":[]}',
                                                     1_800_000_000.0)
    with pytest.raises(KeyReused):
        keys.begin(ident, fingerprint(b"[2]"))


def test_a_key_whose_request_was_not_accepted_is_free_again():
    keys = IdempotencyKeys(3600, 10, clock=Clock())
    ident = key_id("", "k-1")
    assert keys.begin(ident, fingerprint(b"[1]")) is None
    keys.release(ident)
    assert keys.begin(ident, fingerprint(b"[2]")) is None  # a first try: any body


def test_keys_are_scoped_by_the_write_key_that_sent_them():
    assert key_id("write-key-a", "k-1") != key_id("write-key-b", "k-1") != key_id("", "k-1")


def test_keys_end_with_their_window_and_the_oldest_go_first_beyond_capacity():
    clock, evicted = Clock(), []
    keys = IdempotencyKeys(3600, 3, clock=clock, on_evict=lambda: evicted.append(1))
    for i in range(4):
        _answer(keys, key_id("", f"k-{i}"))
        clock.now += 1
    assert len(keys) == 3 and len(evicted) == 1
    assert keys.oldest_age() == 3.0  # k-1, answered 3 s ago: a repeat of k-0 is no longer recognised
    assert keys.begin(key_id("", "k-0"), fingerprint(b"[9]")) is None  # forgotten: a first try again
    clock.now += 3600
    assert keys.begin(key_id("", "k-3"), fingerprint(b"[9]")) is None  # its window is over
    assert len(keys) == 0


def test_keys_come_back_after_a_restart_from_their_files_and_from_the_log(tmp_path):
    clock = Clock()
    keys = IdempotencyKeys(3600, 10, tmp_path, clock=clock)
    keys.load([])
    synced = _answer(keys, key_id("", "synced"))
    keys.sync()
    unsynced_record = keys.record(key_id("", "only-in-the-log"), fingerprint(b"[1]"), 202, b"{}")
    # A restart: the key file has what was synced; the log still holds the record of a request it has not deleted.
    again = IdempotencyKeys(3600, 10, tmp_path, clock=clock)
    assert again.load([unsynced_record]) == 2
    assert again.begin(key_id("", "synced"), bytes.fromhex(synced[1])) is not None
    assert again.begin(key_id("", "only-in-the-log"), fingerprint(b"[1]")) is not None
    # ... and the log's record is in the key files now, so the log may delete its segment.
    third = IdempotencyKeys(3600, 10, tmp_path, clock=clock)
    assert third.load([]) == 2
    clock.now += 3 * 3600  # past the window: the files go, and their keys with them
    assert IdempotencyKeys(3600, 10, tmp_path, clock=clock).load([]) == 0
    assert list(tmp_path.glob("keys-*.jsonl")) == []


# --- through HTTP --------------------------------------------------------------------------------------------------

async def test_a_repeated_key_gets_the_first_answer_and_stores_nothing_again(make_client, ch):
    client = await make_client()
    batch = [event(session_id=f"idem-{i}") for i in range(3)] + [event(event_name="nope")]
    first = await client.post("/events", json=batch, headers={"Idempotency-Key": "batch-1"})
    assert first.status == 202
    answer = await first.json()
    assert answer["accepted"] == 3 and [r["index"] for r in answer["rejected"]] == [3]
    for _ in range(2):
        again = await client.post("/events", json=batch, headers={"Idempotency-Key": "batch-1"})
        assert again.status == 202 and await again.json() == answer
        assert again.headers["Idempotent-Replayed"] == "true"
    await eventually(lambda: count(ch) == 3)
    await asyncio.sleep(0.5)  # a flush interval more: nothing else arrives
    assert count(ch) == 3
    metrics = await (await client.get("/metrics")).text()
    assert "ingest_idempotent_replays_total 2.0" in metrics and "ingest_idempotency_keys 1.0" in metrics


async def test_the_same_key_with_another_body_is_refused_with_422(make_client, ch):
    client = await make_client()
    assert (await client.post("/events", json=[event(session_id="a")], headers={"Idempotency-Key": "k"})).status == 202
    changed = await client.post("/events", json=[event(session_id="b")], headers={"Idempotency-Key": "k"})
    assert changed.status == 422
    body = await changed.json()
    assert body["error"] == "idempotency_key_reused" and "different request body" in body["message"]
    await eventually(lambda: count(ch) == 1)
    assert ch.query("SELECT session_id FROM events").result_rows == [("a",)]


async def test_a_beacon_carries_its_key_in_the_query_string(make_client, ch):
    client = await make_client()
    body = json.dumps([event(session_id="beacon")])
    for _ in range(2):
        resp = await client.post("/events?idempotency_key=b-1", data=body, headers={"Content-Type": "text/plain"})
        assert resp.status == 202
    await eventually(lambda: count(ch) == 1)
    await asyncio.sleep(0.5)
    assert count(ch) == 1


@pytest.mark.parametrize("headers, query, words", [
    ({"Idempotency-Key": "x" * 256}, "", "1 to 255 characters"),
    ({"Idempotency-Key": "tab\there"}, "", "printable ASCII"),
    ({"Idempotency-Key": "a"}, "?idempotency_key=b", "differ"),
])
async def test_an_unusable_key_is_refused_with_400_and_nothing_stored(make_client, ch, headers, query, words):
    client = await make_client()
    resp = await client.post(f"/events{query}", json=[event()], headers=headers)
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == "bad_idempotency_key" and words in body["message"]
    await asyncio.sleep(0.5)
    assert count(ch) == 0


async def test_a_request_refused_for_a_full_buffer_leaves_its_key_free_for_the_retry(make_client, ch):
    client = await make_client(buffer_max_events=2, flush_events=2)
    batch = [event(session_id=f"full-{i}") for i in range(3)]
    assert (await client.post("/events", json=batch, headers={"Idempotency-Key": "k"})).status == 503
    fits = batch[:2]
    resp = await client.post("/events", json=fits, headers={"Idempotency-Key": "k"})
    assert resp.status == 202  # the refused try left no answer behind: this is a first try, with any body
    await eventually(lambda: count(ch) == 2)


# --- a real process, killed between the tries ----------------------------------------------------------------------

def _post(url: str, events: list[dict], key: str) -> tuple[int, dict]:
    req = urllib.request.Request(f"{url}/events", data=json.dumps(events).encode(),
                                 headers={"Content-Type": "application/json", "Idempotency-Key": key})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


@pytest.mark.slow
def test_four_tries_of_one_key_with_a_kill_9_between_store_the_events_once(tmp_path):
    env = {"CLICKHOUSE_URL": f"chdb://{tmp_path / 'ch'}", "CLICKHOUSE_DATABASE": "idem",
           "INGEST_WAL_DIR": str(tmp_path / "wal"), "INGEST_DEAD_LETTER_PATH": str(tmp_path / "dead.jsonl"),
           # Long enough that the first try's events are still only in the log when the process is killed.
           "INGEST_FLUSH_INTERVAL_SECONDS": "30"}
    batch = [event(session_id=f"try-{i}") for i in range(50)]
    service = Service(tmp_path, **env).wait_healthy()
    first = _post(service.url, batch, "order-42")
    assert first[0] == 202 and first[1]["accepted"] == 50
    assert _post(service.url, batch, "order-42") == first
    service.kill()  # the events are in the log only, not yet in storage

    again = Service(tmp_path, **env).wait_healthy()  # the key comes back from the log, with the events
    assert _post(again.url, batch, "order-42") == first
    assert again.stop() == 0, again.output()  # stored: the log deletes the record; the key file keeps the key
    assert sum(p.stat().st_size for p in (tmp_path / "wal").glob("*.wal")) == 0

    third = Service(tmp_path, **env).wait_healthy()
    assert _post(third.url, batch, "order-42") == first
    changed = _post(third.url, batch[:10], "order-42")
    assert changed[0] == 422 and changed[1]["error"] == "idempotency_key_reused"
    assert third.stop() == 0, third.output()
    assert count_rows(tmp_path / "ch", "idem") == 50
    assert count_rows(tmp_path / "ch", "idem", "session_id = 'try-0'") == 1
