"""Body decoding: each encoding round-trips, bombs stop at the limit, and broken or truncated streams are refused."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest

from ingest.api.decoding import BodyDecoder, DecodeError, TooLarge

PAYLOAD = b'[{"event_name": "page_view"}]' * 50


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return c.compress(data) + c.flush()


ENCODED = {
    "identity": PAYLOAD,
    "gzip": gzip.compress(PAYLOAD),
    "deflate": zlib.compress(PAYLOAD),
    "br": brotli.compress(PAYLOAD),
}


def _decode(encoding: str, data: bytes, limit: int = 1 << 20, chunk: int = 7) -> bytes:
    decoder = BodyDecoder(encoding, limit)
    out = b"".join(decoder.feed(data[i:i + chunk]) for i in range(0, len(data), chunk))
    decoder.finish()
    return out


@pytest.mark.parametrize("encoding", list(ENCODED))
def test_each_encoding_round_trips_in_small_chunks(encoding):
    assert _decode(encoding, ENCODED[encoding]) == PAYLOAD


def test_raw_deflate_without_zlib_header_is_accepted_like_browsers_do():
    assert _decode("deflate", _raw_deflate(PAYLOAD)) == PAYLOAD


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_a_bomb_stops_one_byte_past_the_limit(encoding):
    bomb = {"gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress}[encoding](b" " * 20_000_000)
    decoder = BodyDecoder(encoding, 10_000)
    with pytest.raises(TooLarge):
        decoder.feed(bomb)
    assert decoder.size <= 10_000 + 65_536  # never more than the limit plus one output buffer


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_a_truncated_stream_is_refused(encoding):
    with pytest.raises(DecodeError, match="truncated"):
        _decode(encoding, ENCODED[encoding][: len(ENCODED[encoding]) // 2])


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_bytes_after_the_end_of_the_stream_are_refused(encoding):
    with pytest.raises(DecodeError, match="after the end"):
        _decode(encoding, ENCODED[encoding] + b"junk", chunk=1 << 20)


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_garbage_is_refused_with_the_encoding_named(encoding):
    with pytest.raises(DecodeError, match=encoding):
        _decode(encoding, b"\x1f\x8b\x08\x00garbage that is not compressed at all")


def test_an_empty_body_is_left_for_the_caller_to_call_empty():
    for encoding in ENCODED:
        assert _decode(encoding, b"") == b""
