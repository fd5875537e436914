"""A JSON array's elements, or a JSON object's members, one at a time in bounded memory, as `json.load` reads them.

MG-LLaVA's trainer reads its training and bbox JSONs with `json.load`; these readers give the same values and refuse
the same files (the standard library's own C scanner parses each element), without holding the file: the text is
read 4 MiB at a time, decoded as UTF-8, and each element is parsed from where the last one ended. An element that
runs past the end of what was read is parsed again once more is read; one not complete within 64 Mi characters is
not JSON. A number, which can go on in the next chunk, is only taken when at least 3 more characters are there (`1.5`
read as `1.`, `1e5` as `1e`).

What `json.load` accepts, these accept: `NaN` and `Infinity`, integers of any size, lone surrogate escapes; what it
refuses, they refuse with `StreamError`: bytes that are not UTF-8, a missing comma, trailing data, form feeds
between tokens, nesting deeper than the interpreter's recursion limit.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Iterator
from typing import BinaryIO

CHUNK = 4 * 1024 * 1024  # bytes read at a time
LONGEST = 64 * 1024 * 1024  # characters one element may span
NUMBER_LOOKAHEAD = 3  # characters after a number that show it ended (".5", "e+5")
_WHITESPACE = re.compile(r"[ \t\n\r]*")  # json's own
_scan = json.JSONDecoder().scan_once


class StreamError(ValueError):
    """Not JSON as `json.load` reads it; the message says why and at which character."""


class _Text:
    """The stream's text, read on demand, with a cursor."""

    def __init__(self, stream: BinaryIO):
        self.stream = stream
        self.utf8 = codecs.getincrementaldecoder("utf-8")()
        self.buf, self.pos, self.before, self.bytes_read, self.eof = "", 0, 0, 0, False

    def more(self) -> bool:
        """Read the next chunk onto what is left of the text; False at the end of the stream."""
        if self.eof:
            return False
        data = self.stream.read(CHUNK)
        self.eof = not data
        try:
            text = self.utf8.decode(data, final=self.eof)
        except UnicodeDecodeError as e:
            raise StreamError(f"not UTF-8 ({e.reason}) at byte {self.bytes_read + e.start}") from None
        self.bytes_read += len(data)
        self.before += self.pos
        self.buf, self.pos = self.buf[self.pos :] + text, 0
        return True

    def error(self, what: str, at: int | None = None) -> StreamError:
        where = self.before + (self.pos if at is None else at)
        return StreamError(f"{what.removesuffix(' at')} at character {where}")

    def peek(self) -> str:
        """The next character that is not whitespace ("" at the end), the cursor on it."""
        while True:
            self.pos = _WHITESPACE.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return ""

    def expect(self, *chars: str) -> str:
        c = self.peek()
        if c not in chars:
            raise self.error(f"expecting {' or '.join(repr(x) for x in chars)}")
        self.pos += 1
        return c

    def value(self) -> object:
        """The JSON value at the cursor (after `peek`), the cursor after it."""
        try:  # the common case, in one call: a value well inside the text read
            value, end = _scan(self.buf, self.pos)
            if end + NUMBER_LOOKAHEAD < len(self.buf):
                self.pos = end
                return value
        except (StopIteration, ValueError, RecursionError):
            pass
        return self._value_at_the_edge()

    def _value_at_the_edge(self) -> object:
        """The value at the cursor when it failed to parse or ended near the end of the text read."""
        while True:
            try:
                value, end = _scan(self.buf, self.pos)
            except StopIteration:
                if self._read_on():
                    continue
                raise self.error("expecting a value") from None
            except json.JSONDecodeError as e:
                if self._read_on():
                    continue
                raise self.error(e.msg, e.pos) from None
            except RecursionError:
                raise self.error("nested deeper than json.load reads") from None
            if end + NUMBER_LOOKAHEAD >= len(self.buf) and type(value) in (int, float) and self.more():
                continue
            self.pos = end
            return value

    def _read_on(self) -> bool:
        """After a failed parse: read more if the value may only have been cut off by the end of the text read."""
        return len(self.buf) - self.pos <= LONGEST and self.more()

    def closes(self, closing: str) -> bool:
        """After a value: True when `closing` follows (the cursor after it), False after a comma (the cursor on the
        next value)."""
        buf, pos = self.buf, self.pos
        if pos + 2 < len(buf) and buf[pos] == ",":  # the common case: "," or ", " then the next value
            pos += 1
            if buf[pos] in " \t\n\r":
                pos = _WHITESPACE.match(buf, pos).end()
            if pos < len(buf):
                self.pos = pos
                return False
        if self.expect(",", closing) == closing:
            return True
        self.peek()
        return False

    def end(self) -> None:
        if self.peek():
            raise self.error("extra data after the JSON value")


def array_items(stream: BinaryIO) -> Iterator[object]:
    """The elements of the JSON array that is the whole of `stream`."""
    return _each(stream, "[", "]", _Text.value)


def object_items(stream: BinaryIO) -> Iterator[tuple[str, object]]:
    """The (key, value) members, in order and repeats included, of the JSON object that is the whole of `stream`."""
    return _each(stream, "{", "}", _member)


def _each(stream: BinaryIO, opening: str, closing: str, read: Callable[[_Text], object]) -> Iterator:
    text = _Text(stream)
    text.expect(opening)
    if text.peek() == closing:
        text.pos += 1
    else:
        while True:
            yield read(text)
            if text.closes(closing):
                break
    text.end()


def _member(text: _Text) -> tuple[str, object]:
    if text.peek() != '"':
        raise text.error("expecting a property name in double quotes")
    key = text.value()
    text.expect(":")
    text.peek()
    return key, text.value()
