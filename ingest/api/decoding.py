"""Request body decoding (Content-Encoding), streamed and capped, so every bad or oversized body gets our JSON answer.

aiohttp's own decoding (turned off in create_app) answers some broken deflate/brotli bodies with a plain-text
400 from inside its protocol, before any handler runs, and has hung on others; decoding here keeps that in our hands.
"""

from __future__ import annotations

import zlib

import brotli

ENCODINGS = ("identity", "gzip", "deflate", "br")


class DecodeError(ValueError):
    """The body is not valid data in its declared Content-Encoding."""


class TooLarge(ValueError):
    """The decoded body would exceed the limit; decoding stopped there (a compression bomb never inflates whole)."""


class BodyDecoder:
    """Turns the chunks of one body into decoded bytes, never producing more than `limit` bytes in total."""

    def __init__(self, encoding: str, limit: int) -> None:
        if encoding not in ENCODINGS:
            raise ValueError(f"unsupported encoding {encoding!r}")
        self.encoding, self.limit, self.size = encoding, limit, 0
        self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS) if encoding == "gzip" else None
        self._brotli = brotli.Decompressor() if encoding == "br" else None
        self._fed = False

    def _room(self) -> int:
        return self.limit - self.size + 1  # one byte past the limit is enough to know it was passed

    def _take(self, piece: bytes, out: list[bytes]) -> None:
        self.size += len(piece)
        if self.size > self.limit:
            raise TooLarge(f"decoded body exceeds {self.limit} bytes")
        out.append(piece)

    def feed(self, chunk: bytes) -> bytes:
        """The decoded bytes this chunk yields."""
        if not chunk:
            return b""
        self._fed = True
        out: list[bytes] = []
        if self.encoding == "identity":
            self._take(chunk, out)
        elif self.encoding == "br":
            decoder = self._brotli
            assert decoder is not None
            try:
                self._take(decoder.process(chunk, output_buffer_limit=self._room()), out)
                while not decoder.can_accept_more_data():
                    self._take(decoder.process(b"", output_buffer_limit=self._room()), out)
            except brotli.error as exc:
                raise DecodeError(f"not valid br data: {exc}") from None
        else:
            if self._zlib is None:
                # HTTP "deflate" means zlib-wrapped (RFC 1950), but some clients send raw deflate: look at the
                # first byte (compression method 8 in its low bits means a zlib header), as browsers do.
                self._zlib = zlib.decompressobj(zlib.MAX_WBITS if chunk[0] & 0x0F == 8 else -zlib.MAX_WBITS)
            data = chunk
            try:
                while data:
                    if self._zlib.eof:
                        raise DecodeError(f"data after the end of the {self.encoding} stream")
                    self._take(self._zlib.decompress(data, self._room()), out)
                    data = self._zlib.unconsumed_tail
            except zlib.error as exc:
                raise DecodeError(f"not valid {self.encoding} data: {exc}") from None
            if self._zlib.unused_data:
                raise DecodeError(f"data after the end of the {self.encoding} stream")
        return b"".join(out)

    def finish(self) -> None:
        """Check the stream ended where the body did (a truncated body is refused, not half-read)."""
        if not self._fed:
            return  # an empty body is judged as empty, whatever encoding it declares
        if self._zlib is not None and not self._zlib.eof:
            raise DecodeError(f"the {self.encoding} stream is truncated")
        if self._brotli is not None and not self._brotli.is_finished():
            raise DecodeError("the br stream is truncated")
