"""The buffer's rules, without storage or HTTP: cap, flush triggers, one batch in flight."""

from __future__ import annotations

import pytest

from ingest.delivery.buffer import Buffer, BufferFull


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def rows(n: int, tag: str = "r") -> list[tuple]:
    return [("page_view", i, f"{tag}{i}", None, "desktop", "DE", "{}") for i in range(n)]


def test_rows_are_taken_all_or_none_at_the_cap():
    buf = Buffer(max_events=5, flush_events=5, flush_interval=2)
    buf.add(rows(4))
    with pytest.raises(BufferFull):
        buf.add(rows(2))
    assert len(buf) == 4
    buf.add(rows(1))
    assert len(buf) == 5


def test_a_batch_is_due_at_the_count_or_after_the_interval_from_the_oldest_row():
    clock = Clock()
    buf = Buffer(max_events=100, flush_events=3, flush_interval=2, clock=clock)
    assert buf.seconds_until_due() is None
    buf.add(rows(1))
    clock.now += 0.5
    buf.add(rows(1))
    assert buf.seconds_until_due() == pytest.approx(1.5)  # counted from the oldest, not the newest
    clock.now += 1.5
    assert buf.seconds_until_due() == 0.0
    clock.now -= 1.5
    buf.add(rows(1))
    assert buf.seconds_until_due() == 0.0


def test_a_failed_batch_is_offered_again_unchanged_while_new_rows_wait_behind_it():
    buf = Buffer(max_events=100, flush_events=10, flush_interval=2)
    buf.add(rows(3, "a"))
    first = buf.take()
    buf.add(rows(2, "b"))
    again = buf.take()  # not done: the same batch, same token, nothing merged in
    assert again is first and len(again.rows) == 3
    assert len(buf) == 5 and buf.waiting == 2
    buf.done(first)
    second = buf.take()
    assert [r[2] for r in second.rows] == ["b0", "b1"] and second.token != first.token
    buf.done(second)
    assert len(buf) == 0 and buf.take() is None


def test_the_batch_in_flight_counts_against_the_cap():
    buf = Buffer(max_events=4, flush_events=4, flush_interval=2)
    buf.add(rows(3))
    buf.take()
    with pytest.raises(BufferFull):
        buf.add(rows(2))
