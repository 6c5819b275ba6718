"""Nothing acknowledged is lost: the write-ahead log, replay without duplicates, and dead letters."""

from __future__ import annotations

import asyncio
import resource
import signal

import pytest

from ingest.contract.events import Row
from ingest.delivery.buffer import Buffer
from ingest.delivery.deadletter import DeadLetterFile
from ingest.delivery.pipeline import Pipeline
from ingest.delivery.wal import WriteAheadLog, decode, encode
from ingest.metrics import Metrics
from ingest.storage.sink import Sink

from .harness.engine import count
from .harness.events import event
from .harness.polling import eventually


def rows(n: int, tag: str) -> list[tuple]:
    return [("page_view", 1_795_000_000_000 + i, f"{tag}{i}", None, "desktop", "DE", "{}") for i in range(n)]


def test_a_record_round_trips_and_a_torn_tail_is_dropped():
    key = ["ab" * 16, "cd" * 16, 202, '{"accepted":1,"rejected":[]}', 1_795_000_000.5]
    data = encode(7, rows(2, "a")) + encode(8, rows(1, "b"), key)
    assert decode(data) == ([(7, rows(2, "a"), None), (8, rows(1, "b"), key)], len(data))
    torn = data[:-3]
    records, end = decode(torn)
    assert records == [(7, rows(2, "a"), None)] and end == len(encode(7, rows(2, "a")))
    flipped = bytearray(data)
    flipped[-2] ^= 0xFF  # a corrupted payload fails its checksum
    assert decode(bytes(flipped))[0] == [(7, rows(2, "a"), None)]


async def _append(wal: WriteAheadLog, rs: list[Row]) -> int:
    return await wal.append(rs, lambda lsn: None, lambda: None)


async def test_a_restart_replays_only_what_storage_does_not_have(tmp_path):
    wal = WriteAheadLog(tmp_path, segment_bytes=1)  # tiny segments: each write rotates
    wal.recover()
    lsns = [await _append(wal, rows(2, f"r{i}-")) for i in range(4)]
    assert lsns == [1, 2, 3, 4]
    wal.stored(2)
    wal.close()  # as if the process died here

    again = WriteAheadLog(tmp_path)
    recovery = again.recover()
    assert [lsn for lsn, _ in recovery.records] == [3, 4]
    assert recovery.records[0][1] == rows(2, "r2-")
    assert again.wal_id == wal.wal_id
    assert await _append(again, rows(1, "new")) == 5  # numbering goes on: tokens never repeat
    again.close()


async def test_a_failed_log_write_is_refused_and_leaves_no_trace_in_the_log(tmp_path):
    """A write that fails part-way (here: the file-size limit, as a full disk would) is cut back out."""
    wal = WriteAheadLog(tmp_path)
    wal.recover()
    outcomes = {}

    async def append(tag):
        try:
            outcomes[tag] = await wal.append(rows(3, tag), lambda lsn: None, lambda: None)
        except OSError:
            outcomes[tag] = "refused"

    await append("a")
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death by signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (wal._active_size + 40, limit[1]))
    try:
        await append("b")  # 40 bytes of it reach the disk, then the write fails
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, previous)
    await append("c")
    wal.close()
    assert outcomes == {"a": 1, "b": "refused", "c": 3}
    replayed = WriteAheadLog(tmp_path).recover().records
    assert [(lsn, rs[0][2]) for lsn, rs in replayed] == [(1, "a0"), (3, "c0")]


async def test_stored_segments_are_deleted(tmp_path):
    wal = WriteAheadLog(tmp_path, segment_bytes=1)
    wal.recover()
    for i in range(5):
        await _append(wal, rows(2, f"s{i}"))
    assert len(list(tmp_path.glob("*.wal"))) >= 5
    wal.stored(5)
    assert len(list(tmp_path.glob("*.wal"))) == 1  # only the open segment remains
    wal.close()


async def test_concurrent_appends_share_fsyncs_and_keep_order(tmp_path):
    wal = WriteAheadLog(tmp_path)
    wal.recover()
    seen = []
    results = await asyncio.gather(*(wal.append(rows(1, f"c{i}"), seen.append, lambda: None) for i in range(50)))
    assert sorted(results) == list(range(1, 51)) and seen == list(range(1, 51))
    wal.close()
    assert [lsn for lsn, _ in WriteAheadLog(tmp_path).recover().records] == list(range(1, 51))


async def test_an_insert_that_landed_before_a_crash_is_not_stored_twice(tmp_path, settings, ch):
    sink = Sink(settings.clickhouse_url, settings.clickhouse_database)
    sink.open()
    wal = WriteAheadLog(tmp_path / "wal")
    metrics = Metrics()
    first = Pipeline(Buffer(1000, 1000, 60), sink, metrics, wal=wal)
    first.recover()
    await first.accept(rows(3, "x"))
    await first.accept(rows(2, "y"))

    def dies(last_lsn):  # the insert lands ... and the process dies before it can note that
        raise RuntimeError("killed")

    wal.stored = dies
    assert not await first.flush_once()
    wal.close()
    assert count(ch) == 5

    second = Pipeline(Buffer(1000, 1000, 60), sink, Metrics(), wal=WriteAheadLog(tmp_path / "wal"))
    assert second.recover() == 5
    assert await second.drain(5)
    assert count(ch) == 5  # the replayed batch carried the same token: the server dropped it
    # ... and so did the dashboard's rollups, which the views feed from every insert into events.
    assert ch.command("SELECT sum(events) FROM events_per_minute") == 5
    assert ch.command("SELECT count() FROM feature_users_per_minute") == 0  # none were feature_used
    assert ch.command("SELECT uniqCombinedMerge(12)(sessions) FROM active_sessions_5m") == 5
    # The segmented rollups (004_segments.sql) too: each of their three grouping sets counts every event once.
    assert ch.query("SELECT device_type = '', country_code = '', sum(events) FROM events_per_minute_by_segment "
                    "GROUP BY ALL ORDER BY ALL").result_rows == [(False, False, 5), (False, True, 5), (True, False, 5)]
    assert ch.command("SELECT sum(events) FROM segments_per_day") == 5
    await second.accept(rows(1, "z"))
    assert await second.drain(5)
    assert count(ch) == 6
    assert ch.command("SELECT sum(events) FROM events_per_minute") == 6
    second.wal.close()
    sink.close()


async def test_rows_clickhouse_refuses_go_to_the_dead_letter_file_and_the_rest_is_stored(make_client, ch,
                                                                                         settings):
    client = await make_client(flush_events=1000, flush_interval_seconds=0.1)
    await client.get("/health")
    ch.command("ALTER TABLE events ADD CONSTRAINT no_poison CHECK session_id NOT LIKE 'poison%'")
    batch = [event(session_id=f"good-{i}") for i in range(20)]
    batch[3]["session_id"] = "poison-1"
    batch[17]["session_id"] = "poison-2"
    resp = await client.post("/events", json=batch)
    assert resp.status == 202 and (await resp.json())["accepted"] == 20  # valid by the schema
    await eventually(lambda: count(ch) == 18, timeout=10)
    # The letters are written once the whole split is done, just after the last good rows are visible.
    await eventually(lambda: len(DeadLetterFile(settings.dead_letter_path).read()) == 2, timeout=10)
    letters = DeadLetterFile(settings.dead_letter_path).read()
    assert sorted(d["event"]["session_id"] for d in letters) == ["poison-1", "poison-2"]
    assert all("VIOLATED_CONSTRAINT" in d["reason"] for d in letters)
    assert letters[0]["event"]["timestamp"] == batch[3]["timestamp"].replace("Z", "+00:00")[:23] + "+00:00"
    # Later data is not blocked behind the refused rows.
    await client.post("/events", json=[event(session_id="after")])
    await eventually(lambda: count(ch, "session_id = 'after'") == 1)
    text = await (await client.get("/metrics")).text()
    assert "ingest_events_dead_lettered_total 2.0" in text
    assert (await client.get("/health")).status == 200


@pytest.mark.parametrize("durability", ["wal", "memory"])
async def test_both_durability_modes_store_what_they_accept(make_client, ch, durability):
    client = await make_client(durability=durability)
    resp = await client.post("/events", json=[event(session_id=f"d{i}") for i in range(3)])
    assert resp.status == 202
    await eventually(lambda: count(ch) == 3)


async def test_two_logs_never_give_two_batches_the_same_token(tmp_path):
    """Several ingest processes insert into one server, each with its own log: their deduplication tokens must
    differ even for the same log positions, or the server would drop one process's batch as another's repeat."""
    first, second = WriteAheadLog(tmp_path / "a"), WriteAheadLog(tmp_path / "b")
    first.recover()
    second.recover()
    assert await _append(first, rows(1, "a")) == await _append(second, rows(1, "b")) == 1
    assert first.token(1, 1) != second.token(1, 1)
    first.close()
    second.close()
    again = WriteAheadLog(tmp_path / "a")  # and each keeps its own id across restarts
    again.recover()
    assert again.token(1, 1) == first.token(1, 1)
    again.close()


def test_a_batch_is_cut_into_one_range_of_rows_per_month_the_same_way_every_time():
    from ingest.delivery.pipeline import month_units

    nov, dec = 1_795_000_000_000, 1_796_500_000_000  # 2026-11-18 and 2026-12-05, UTC
    assert month_units(rows(3, "a")) == [(0, 3)]
    batch = [("page_view", ts, f"s{i}", None, "desktop", "DE", "{}") for i, ts in enumerate([dec, nov, dec, nov, nov])]
    again = list(batch)
    assert month_units(batch) == [(0, 3), (3, 5)]
    assert [r[2] for r in batch] == ["s1", "s3", "s4", "s0", "s2"]  # by month, in arrival order within each
    assert month_units(again) == [(0, 3), (3, 5)] and again == batch


def test_an_insert_token_names_its_rows_and_the_rows_no_stored_insert_holds_are_found():
    from ingest.delivery.pipeline import gaps, token_range

    assert token_range("0f3a:4-9[0:500]") == (0, 500)
    assert token_range("0f3a:4-9[250:375]~1a2b3c4d") == (250, 375)
    with pytest.raises(ValueError):
        token_range("0f3a:4-9")
    assert gaps(0, 500, []) == [(0, 500)]
    assert gaps(0, 500, [(0, 500)]) == []
    assert gaps(0, 500, [(250, 375), (0, 125)]) == [(125, 250), (375, 500)]
    assert gaps(300, 500, [(0, 400)]) == [(400, 500)]  # another month's range, overlapping only in part
