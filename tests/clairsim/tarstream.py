"""Streaming extraction of wanted files from a layer archive, as Clair's pkg/tarutil does it.

Clair sniffs the compression from the first bytes (gzip, bzip2, xz, else plain tar), walks the tar
with Go's archive/tar reader and keeps the entries whose name (leading "./" stripped) starts with
one of the wanted names. Regular files, symlinks and hard links are kept; a link's content is
empty. A wanted entry larger than 200 MiB aborts with "file too big"; any read or format error
aborts with "could not extract the archive".

We read tar headers ourselves instead of using `tarfile`, because Go and Python disagree on broken
archives: Go accepts an empty stream and reports garbage after the first entry, while `tarfile`
rejects the first and silently stops at the second. Only a 512-byte block and one wanted file are
ever held in memory.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

BLOCK = 512
MAX_EXTRACTABLE_FILE_SIZE = 200 * 1024 * 1024  # tarutil.MaxExtractableFileSize

ERR_COULD_NOT_EXTRACT = "tarutil: could not extract the archive"
ERR_FILE_TOO_BIG = "tarutil: could not extract one or more files from the archive: file too big"

_GZIP = b"\x1f\x8b"
_BZIP2 = b"BZh"
_XZ = b"\xfd7zXZ\x00"

# Go's archive/tar type flags
_REG, _REG_OLD, _LINK, _SYMLINK = b"0", b"\x00", b"1", b"2"
_PAX, _PAX_GLOBAL, _GNU_LONGNAME, _GNU_LONGLINK = b"x", b"g", b"L", b"K"


_OCTAL = re.compile(rb"[0-7]+")


class ExtractError(Exception):
    """Extraction failed; str() is Clair's error text (always answered with 422)."""


class _TarFormatError(Exception):
    pass


@dataclass
class _Entry:
    name: str
    typeflag: bytes
    size: int


class _Reader:
    """Reads exactly what is asked from a stream, failing on a premature end."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def read_exact(self, size: int) -> bytes:
        chunks = []
        remaining = size
        while remaining:
            chunk = self._stream.read(min(remaining, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        return data

    def skip(self, size: int) -> None:
        remaining = size
        while remaining:
            chunk = self._stream.read(min(remaining, 1 << 20))
            if not chunk:
                raise _TarFormatError("unexpected EOF")
            remaining -= len(chunk)


def _parse_number(field: bytes) -> int:
    """Go's tar numeric field: octal text, or base-256 when the high bit of byte 0 is set."""
    if field and field[0] & 0x80:
        value = field[0] & 0x7F
        negative = bool(field[0] & 0x40)
        for byte in field[1:]:
            value = (value << 8) | byte
        if negative:
            value -= 1 << (8 * len(field) - 1)
        return value
    text = field.strip(b" \x00")
    if not text:
        return 0
    if not _OCTAL.fullmatch(text):
        raise _TarFormatError("invalid octal number")
    return int(text, 8)


def _cstring(field: bytes) -> str:
    return field.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _checksum_ok(block: bytes) -> bool:
    try:
        stored = _parse_number(block[148:156])
    except _TarFormatError:
        return False
    unsigned = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    signed = sum(b - 256 if b > 127 else b for b in block[:148]) + 8 * 0x20
    signed += sum(b - 256 if b > 127 else b for b in block[156:])
    return stored in (unsigned, signed)


def _parse_pax(data: bytes) -> dict[str, str]:
    """PAX records "LEN key=value\\n"; malformed records are a header error, as in Go."""
    records: dict[str, str] = {}
    while data:
        space = data.find(b" ")
        if space <= 0:
            raise _TarFormatError("invalid PAX record")
        try:
            length = int(data[:space])
        except ValueError:
            raise _TarFormatError("invalid PAX record") from None
        if length <= space or length > len(data) or data[length - 1 : length] != b"\n":
            raise _TarFormatError("invalid PAX record")
        record = data[space + 1 : length - 1]
        data = data[length:]
        key, sep, value = record.partition(b"=")
        if not sep:
            raise _TarFormatError("invalid PAX record")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
    return records


def _entries(reader: _Reader) -> Iterator[_Entry]:
    """Yield entries; the caller must consume or skip exactly `size` bytes of each."""
    pax: dict[str, str] = {}
    long_name: str | None = None
    while True:
        block = reader.read_exact(BLOCK)
        if not block:
            return  # io.EOF before any header byte: a normal end for Go
        if len(block) < BLOCK:
            raise _TarFormatError("unexpected EOF")
        if block == bytes(BLOCK):
            second = reader.read_exact(BLOCK)
            if not second or second == bytes(BLOCK):
                return  # one zero block at EOF, or two, end the archive
            raise _TarFormatError("zero block followed by data")
        if not _checksum_ok(block):
            raise _TarFormatError("invalid tar header")
        typeflag = block[156:157]
        size = _parse_number(block[124:136])
        if size < 0:
            raise _TarFormatError("negative size")
        name = _cstring(block[0:100])
        if block[257:263] == b"ustar\x00":  # USTAR/PAX: the prefix field extends the name
            prefix = _cstring(block[345:500])
            if prefix:
                name = prefix + "/" + name
        padded = -size % BLOCK
        if typeflag in (_PAX, _PAX_GLOBAL):
            data = reader.read_exact(size)
            if len(data) < size:
                raise _TarFormatError("unexpected EOF")
            reader.skip(padded)
            records = _parse_pax(data)
            if typeflag == _PAX:
                pax = records
            continue
        if typeflag in (_GNU_LONGNAME, _GNU_LONGLINK):
            data = reader.read_exact(size)
            if len(data) < size:
                raise _TarFormatError("unexpected EOF")
            reader.skip(padded)
            if typeflag == _GNU_LONGNAME:
                long_name = data.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")
            continue
        if long_name is not None:
            name = long_name
        if "path" in pax:
            name = pax["path"]
        if "size" in pax:
            if not pax["size"].isdigit():
                raise _TarFormatError("invalid PAX size")
            size = int(pax["size"])
        pax, long_name = {}, None
        yield _Entry(name=name, typeflag=typeflag, size=size)
        # The consumer has read or skipped the entry's data; skip the padding to the next block.
        data_size = size if _has_data(typeflag) else 0
        reader.skip(-data_size % BLOCK)


def _decompressed(stream: BinaryIO) -> BinaryIO:
    """Wrap `stream` in a decompressor chosen from its magic bytes, as tarutil does."""
    buffered = io.BufferedReader(stream, buffer_size=1 << 20)  # type: ignore[type-var]
    head = buffered.peek(6)[:6]
    if len(head) < 6:
        return buffered  # Go's Peek(6) fails on a shorter stream: read it as plain tar
    if head.startswith(_GZIP):
        return gzip.GzipFile(fileobj=buffered, mode="rb")  # type: ignore[return-value]
    if head.startswith(_BZIP2):
        return bz2.BZ2File(buffered, mode="rb")  # type: ignore[return-value]
    if head.startswith(_XZ):
        return lzma.LZMAFile(buffered, mode="rb")  # type: ignore[return-value]
    return buffered


def _has_data(typeflag: bytes) -> bool:
    """Go's tar reader gives no data for links, directories, devices and FIFOs."""
    return typeflag not in (_LINK, _SYMLINK, b"3", b"4", b"5", b"6")


def extract_files(stream: BinaryIO, wanted: list[str]) -> dict[str, bytes]:
    """The wanted files of a layer archive: {name without leading "./": content}."""
    files: dict[str, bytes] = {}
    try:
        reader = _Reader(_decompressed(stream))
        for entry in _entries(reader):
            name = entry.name[2:] if entry.name.startswith("./") else entry.name
            data_size = entry.size if _has_data(entry.typeflag) else 0
            if any(name.startswith(prefix) for prefix in wanted):
                if entry.size > MAX_EXTRACTABLE_FILE_SIZE:
                    raise ExtractError(ERR_FILE_TOO_BIG)
                if entry.typeflag in (_REG, _REG_OLD, _LINK, _SYMLINK):
                    content = reader.read_exact(data_size)
                    if len(content) < data_size:
                        raise _TarFormatError("unexpected EOF")
                    files[name] = content
                    continue
            reader.skip(data_size)
    except ExtractError:
        raise
    except (_TarFormatError, OSError, EOFError, lzma.LZMAError, zlib.error, ValueError):
        raise ExtractError(ERR_COULD_NOT_EXTRACT) from None
    return files
