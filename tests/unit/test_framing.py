"""Framers: whole, one byte at a time, and with trailing bytes kept for later."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sockserve.framing import (
    ChunkFramer,
    FrameTooLong,
    LengthPrefixFramer,
    LineFramer,
    make_framer,
)


def byte_by_byte(framer: LineFramer | LengthPrefixFramer, data: bytes) -> list[bytes]:
    messages = []
    for i in range(len(data)):
        messages += framer.feed(data[i:i + 1])
    return messages


def test_lines_whole_and_byte_by_byte() -> None:
    data = b"one\ntwo\nthree"
    assert LineFramer().feed(data) == [b"one\n", b"two\n"]
    framer = LineFramer()
    assert byte_by_byte(framer, data) == [b"one\n", b"two\n"]
    assert framer.pending == len(b"three")
    assert framer.feed(b"\n") == [b"three\n"]


def test_line_limit_counts_the_newline() -> None:
    assert LineFramer(max_size=4).feed(b"abc\n") == [b"abc\n"]
    with pytest.raises(FrameTooLong):
        LineFramer(max_size=4).feed(b"abcd\n")
    framer = LineFramer(max_size=4)
    with pytest.raises(FrameTooLong):  # as soon as it cannot fit, before any newline:
        byte_by_byte(framer, b"abcd")  # four bytes leave no room for one


def test_length_prefix() -> None:
    data = struct.pack(">I", 3) + b"abc" + struct.pack(">I", 0) + struct.pack(">I", 5) + b"xy"
    assert LengthPrefixFramer().feed(data) == [b"abc", b""]
    framer = LengthPrefixFramer()
    assert byte_by_byte(framer, data) == [b"abc", b""]
    assert framer.pending == 4 + 2
    assert framer.feed(b"z!!") == [b"xyz!!"]
    assert LengthPrefixFramer().frame(b"hi") == b"\x00\x00\x00\x02hi"
    with pytest.raises(FrameTooLong):
        LengthPrefixFramer(max_size=10).feed(struct.pack(">I", 11))


def test_chunks_and_names() -> None:
    assert ChunkFramer().feed(b"any") == [b"any"] and ChunkFramer().feed(b"") == []
    assert isinstance(make_framer("line", 10), LineFramer)
    with pytest.raises(ValueError, match="unknown framing"):
        make_framer("xml", 10)  # type: ignore[arg-type]


@given(st.lists(st.binary(max_size=50).map(lambda b: b.replace(b"\n", b"")), max_size=20),
       st.integers(min_value=1, max_value=7))
def test_lines_survive_any_split(lines: list[bytes], step: int) -> None:
    data = b"".join(line + b"\n" for line in lines)
    framer = LineFramer()
    messages = []
    for i in range(0, len(data), step):
        messages += framer.feed(data[i:i + step])
    assert messages == [line + b"\n" for line in lines] and framer.pending == 0


@given(st.lists(st.binary(max_size=300), max_size=20), st.integers(min_value=1, max_value=9))
def test_length_prefix_round_trips(payloads: list[bytes], step: int) -> None:
    writer, reader = LengthPrefixFramer(), LengthPrefixFramer()
    data = b"".join(writer.frame(p) for p in payloads)
    messages = []
    for i in range(0, len(data), step):
        messages += reader.feed(data[i:i + step])
    assert messages == payloads


@pytest.mark.parametrize("framer_class,data", [
    (LineFramer, b"ok\n" + b"too long\n"),
    (LengthPrefixFramer, struct.pack(">I", 2) + b"ok" + struct.pack(">I", 2**31)),
])
def test_messages_before_a_too_long_one_come_first(framer_class: type, data: bytes) -> None:
    framer = framer_class(max_size=4)
    assert framer.feed(data) == [b"ok\n" if framer_class is LineFramer else b"ok"]
    with pytest.raises(FrameTooLong):
        framer.feed(b"")  # then the next feed raises


@given(st.binary(max_size=100), st.integers(min_value=1, max_value=20))
def test_chunks_are_never_longer_than_the_limit(data: bytes, limit: int) -> None:
    messages = ChunkFramer(max_size=limit).feed(data)
    assert b"".join(messages) == data
    assert all(0 < len(message) <= limit for message in messages)
