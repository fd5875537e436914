"""Read image archives (zip, tar, tar.gz) shard by shard, without trusting them.

Sharding
--------
A 19 GB zip with 118K members is too much for one task, and ``zipfile`` on an object store is slow: every member
costs a seek, which against S3 is a ranged GET. Instead we read the central directory once (``read_zip_directory``,
a few MB at the end of the file), sort the members by offset, and cut them into contiguous byte ranges
(``plan_zip_shards``). One Airflow mapped task handles one shard: it opens exactly that range as a single forward-only
stream (``Store.open_range``) and walks the local headers in order (``iter_zip_shard``), so a shard costs one GET
however many members it holds. Sizes come from the central directory, which is correct even when the local headers
defer them to a data descriptor. Decompression (``inflate``) is separate so callers can run it in a thread pool;
zlib and crc32 release the GIL.

Tar has no index, so it is read as one stream (``iter_tar``), through ``tarfile``'s streaming mode.

Safety model
------------
Nothing is ever extracted to a filesystem here: members come back as bytes and the caller chooses the destination
key, so the classic attacks are reduced to checks on metadata and on sizes:

* Paths: ``unsafe_reason`` rejects absolute paths (POSIX, drive letters, UNC), ``..`` components, NUL and backslashes,
  and names that are not valid UTF-8.
* Kinds: symlinks, hardlinks, devices and other special members are reported, never followed; their data is not read
  (tar) or never inflated (zip). Encrypted members are reported too.
* Overlapping zip entries (several central-directory entries sharing bytes - the "better zip bomb", CVE-2024-0450) make
  the whole archive unusable: ``read_zip_directory`` checks the spans it can know, ``iter_zip_shard`` re-checks with
  the real local-header lengths.
* Bombs: each member is capped by ``max_member_bytes`` and, above 1 MiB, by ``max_ratio``; inflating never allocates
  past ``min(declared size, cap) + 1`` bytes, so a member lying about its size is caught without being expanded. A
  tar's whole decompressed stream can be capped with ``max_total_bytes``.
* Integrity: zip members must inflate to exactly their declared size and CRC-32; a truncated tar or gzip (including a
  tar cut cleanly between two members, which ``tarfile`` would silently accept) is an ``ArchiveError``.

Two error types: ``ArchiveError`` means the archive as a whole cannot be trusted (stop); ``MemberError`` means one
member is bad, its message is recorded and the rest of the archive carries on.
"""

from __future__ import annotations

import gzip
import math
import re
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

__all__ = [
    "ArchiveError",
    "Member",
    "MemberError",
    "Shard",
    "escape_name",
    "flat_name",
    "inflate",
    "iter_tar",
    "iter_zip_shard",
    "plan_zip_shards",
    "read_zip_directory",
    "unsafe_reason",
]

MiB = 1024 * 1024
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # signature .. name length, extra length: 30 bytes
_LOCAL_SIG = b"PK\x03\x04"
_ZIP_STORED, _ZIP_DEFLATED = 0, 8
# Below this size any compression ratio is allowed: a small blank mask or an all-white PNG is legitimate, and a member
# this small cannot be a bomb anyway.
_RATIO_FREE_BYTES = 1 * MiB
_SKIP_CHUNK = 1 * MiB
_DRIVE = re.compile(r"^[A-Za-z]:")


class ArchiveError(ValueError):
    """The archive as a whole is unusable (truncated, corrupt, overlapping entries, not an archive, a bomb)."""


class MemberError(ValueError):
    """One member is bad; the message is the reason recorded in the manifest, the rest of the archive carries on."""


@dataclass(frozen=True)
class Member:
    name: str  # zip: UTF-8 if flagged, else cp437, exactly as in the central directory (no NUL truncation)
    offset: int  # zip: local header offset; tar: header offset in the tar stream (0 for tar.gz)
    compressed_size: int
    size: int
    method: int  # zip compress_type; -1 for tar
    crc: int | None
    kind: str  # "file" | "dir" | "symlink" | "hardlink" | "device" | "other"
    encrypted: bool = False
    # zip only: exclusive upper bound of the bytes this member may occupy (the next member's local header, or the
    # central directory for the last one). The local header's extra field is not in the central directory, so this is
    # the tightest end a shard can be given without reading it. None for tar and for hand-made members.
    span_end: int | None = None


@dataclass(frozen=True)
class Shard:
    index: int
    start: int  # offset of the first member's local header
    end: int  # exclusive; the next shard's start, or the end of the last member's span
    first: int  # index into the member list (sorted by offset)
    count: int

    def select(self, members: Sequence[Member]) -> Sequence[Member]:
        """This shard's members, from the full list that was planned."""
        return members[self.first : self.first + self.count]


# ----------------------------------------------------------------------------------------------------------------------
# zip: directory and shard plan


def _zip_kind(info: zipfile.ZipInfo) -> str:
    if info.orig_filename.endswith("/"):
        return "dir"
    # Only Unix-made zips carry a file type (st_mode in the high 16 bits); a mode of 0 means "not recorded".
    mode = info.external_attr >> 16
    if info.create_system == 3 and mode:
        fmt = stat.S_IFMT(mode)
        if fmt == stat.S_IFLNK:
            return "symlink"
        if fmt == stat.S_IFDIR:
            return "dir"
        if fmt in (stat.S_IFCHR, stat.S_IFBLK):
            return "device"
        if fmt not in (0, stat.S_IFREG):
            return "other"
    return "file"


def _zip_name_bytes(info: zipfile.ZipInfo) -> int:
    return len(info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437"))


def read_zip_directory(f: BinaryIO) -> list[Member]:
    """All members of a zip, sorted by local header offset.

    `f` must be seekable (a local file or ``Store.open_seekable``); only the end of central directory records and the
    central directory itself are read. Zip64 is handled by ``zipfile``.
    """
    try:
        with zipfile.ZipFile(f) as zf:
            infos = list(zf.infolist())
            cd_start = zf.start_dir
    except zipfile.BadZipFile as e:
        raise ArchiveError(_bad_zip_message(f, e)) from None
    except UnicodeDecodeError as e:
        raise ArchiveError(
            f"corrupt zip: a member name flagged UTF-8 is not valid UTF-8 ({e.reason})"
        ) from None
    except NotImplementedError as e:  # zipfile's "zip file version N" for extract versions it does not know
        raise ArchiveError(f"unsupported zip: {e}") from None
    except (struct.error, EOFError) as e:
        raise ArchiveError(f"corrupt zip: {e}") from None

    infos.sort(key=lambda i: i.header_offset)
    members: list[Member] = []
    for i, info in enumerate(infos):
        limit = infos[i + 1].header_offset if i + 1 < len(infos) else cd_start
        # The local header repeats the name (its extra field may differ, so it is left out): this is the least
        # room the member needs. Anything less means two entries share bytes.
        needed = 30 + _zip_name_bytes(info) + info.compress_size
        if info.header_offset < 0 or info.header_offset + needed > limit:
            what = (
                f"entry {infos[i + 1].orig_filename!r} at offset {limit}"
                if i + 1 < len(infos)
                else f"the central directory at offset {cd_start}"
            )
            raise ArchiveError(
                f"overlapping entries: {info.orig_filename!r} at offset {info.header_offset} needs at least "
                f"{needed} bytes but runs into {what}"
            )
        members.append(
            Member(
                name=info.orig_filename,
                offset=info.header_offset,
                compressed_size=info.compress_size,
                size=info.file_size,
                method=info.compress_type,
                crc=info.CRC,
                kind=_zip_kind(info),
                encrypted=bool(info.flag_bits & 0x1),
                span_end=limit,
            )
        )
    return members


def _bad_zip_message(f: BinaryIO, e: Exception) -> str:
    # "File is not a zip file" is also what zipfile says when the end records are cut off; a local header at the
    # start tells the two apart, which is the difference between "wrong file" and "download incomplete".
    try:
        f.seek(0)
        head = f.read(4)
    except OSError:
        head = b""
    if head == _LOCAL_SIG:
        return f"truncated or corrupt zip: its central directory cannot be read ({e})"
    return f"not a zip archive ({e})"


def _member_end(members: Sequence[Member], i: int) -> int:
    if i + 1 < len(members):
        return members[i + 1].offset
    m = members[i]
    if m.span_end is not None:
        return m.span_end
    # Hand-made member: bound the local header by its largest possible name and extra field, plus a data descriptor.
    return m.offset + 30 + 0xFFFF + 0xFFFF + m.compressed_size + 24


def _greedy(sizes: Sequence[int], budget: int) -> list[tuple[int, int]]:
    groups: list[tuple[int, int]] = []
    first, load = 0, 0
    for i, s in enumerate(sizes):
        if i > first and load + s > budget:
            groups.append((first, i - first))
            first, load = i, 0
        load += s
    groups.append((first, len(sizes) - first))
    return groups


def plan_zip_shards(members: list[Member], *, shard_bytes: int, max_shards: int) -> list[Shard]:
    """Cut offset-sorted members into contiguous shards of about `shard_bytes` each, at most `max_shards` of them.

    Every byte from the first local header to the end of the last member's span belongs to exactly one shard, gaps
    (data descriptors) included, so each shard is one range request. A member larger than the budget gets a shard of
    its own.
    """
    if shard_bytes <= 0 or max_shards <= 0:
        raise ValueError("shard_bytes and max_shards must be positive")
    if not members:
        return []
    for a, b in zip(members, members[1:], strict=False):
        if b.offset <= a.offset:
            raise ValueError(
                "members must be sorted by offset, without duplicates (as read_zip_directory returns them)"
            )
    sizes = [_member_end(members, i) - m.offset for i, m in enumerate(members)]
    groups = _greedy(sizes, shard_bytes)
    if len(groups) > max_shards:
        # Greedy packing needs fewer shards as the budget grows, and total/max_shards + the largest member is always
        # enough (each closed shard then holds more than total/max_shards). Search that window for the smallest budget,
        # which gives the most even shards.
        lo = max(shard_bytes, math.ceil(sum(sizes) / max_shards))
        hi = lo + max(sizes)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(_greedy(sizes, mid)) <= max_shards:
                hi = mid
            else:
                lo = mid + 1
        groups = _greedy(sizes, lo)
    return [
        Shard(
            index=k,
            start=members[first].offset,
            end=_member_end(members, first + count - 1),
            first=first,
            count=count,
        )
        for k, (first, count) in enumerate(groups)
    ]


# ----------------------------------------------------------------------------------------------------------------------
# zip: reading a shard


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    # Network bodies (botocore, urllib3) may return short reads before the end.
    data = stream.read(n)
    if len(data) == n or not data:
        return data
    parts, got = [data], len(data)
    while got < n:
        chunk = stream.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _skip(stream: BinaryIO, n: int, member: Member) -> None:
    while n > 0:
        chunk = stream.read(min(n, _SKIP_CHUNK))
        if not chunk:
            raise ArchiveError(
                f"truncated archive: stream ended before member {member.name!r} at offset {member.offset}"
            )
        n -= len(chunk)


def iter_zip_shard(
    stream: BinaryIO, members: Sequence[Member], start: int, *, max_member_bytes: int | None = None
) -> Iterator[tuple[Member, bytes]]:
    """Yield (member, compressed bytes) for a shard's members, reading `stream` strictly forward.

    `stream` is positioned at archive offset `start` (``store.open_range(key, shard.start, shard.end)``) and `members`
    are that shard's members in offset order (``shard.select(all_members)``). Directories are skipped without reading.
    With `max_member_bytes`, a member whose compressed size exceeds it is skipped in chunks instead of being buffered,
    and yielded with empty bytes (``unsafe_reason`` reports it), so memory stays bounded whatever the archive claims.
    """
    pos = start
    for m in members:
        if m.kind == "dir":
            continue
        if m.offset < pos:
            # read_zip_directory could not see local extra fields; a long one pushes this member's data into the next.
            raise ArchiveError(
                f"overlapping entries: member {m.name!r} at offset {m.offset} starts inside the previous member, "
                f"which ends at {pos}"
            )
        _skip(stream, m.offset - pos, m)
        header = _read_exact(stream, _LOCAL_HEADER.size)
        if len(header) < _LOCAL_HEADER.size:
            raise ArchiveError(
                f"truncated archive: local header of member {m.name!r} at offset {m.offset} is cut short"
            )
        fields = _LOCAL_HEADER.unpack(header)
        if fields[0] != _LOCAL_SIG:
            raise ArchiveError(
                f"bad local header for member {m.name!r} at offset {m.offset}: signature {fields[0]!r}"
            )
        name_len, extra_len = fields[-2], fields[-1]
        _skip(stream, name_len + extra_len, m)
        if max_member_bytes is not None and m.compressed_size > max_member_bytes:
            _skip(stream, m.compressed_size, m)
            raw = b""
        else:
            raw = _read_exact(stream, m.compressed_size)
            if len(raw) < m.compressed_size:
                raise ArchiveError(
                    f"truncated archive: member {m.name!r} has {len(raw)} of {m.compressed_size} compressed bytes"
                )
        pos = m.offset + _LOCAL_HEADER.size + name_len + extra_len + m.compressed_size
        yield m, raw
        del (
            raw
        )  # the caller's reference is theirs; ours must not pin the previous member during the next read


def inflate(member: Member, raw: bytes, *, max_member_bytes: int, max_ratio: float) -> bytes:
    """Decompress and verify one zip member's data (size, CRC-32, caps). Thread-safe; zlib releases the GIL."""
    if member.size > max_member_bytes:
        raise MemberError(f"declared size {member.size} exceeds max_member_bytes {max_member_bytes}")
    if member.compressed_size > 0 and member.size > _RATIO_FREE_BYTES:
        ratio = member.size / member.compressed_size
        if ratio > max_ratio:
            raise MemberError(f"compression ratio {ratio:.0f}:1 exceeds max_ratio {max_ratio:g} (zip bomb)")
    if len(raw) != member.compressed_size:
        raise MemberError(f"expected {member.compressed_size} compressed bytes, got {len(raw)}")
    if member.method == _ZIP_STORED:
        data = raw
    elif member.method == _ZIP_DEFLATED:
        # One byte past the declared size is enough to prove a lie, and is all a bomb gets to allocate.
        d = zlib.decompressobj(-15)
        try:
            data = d.decompress(raw, member.size + 1)
        except zlib.error as e:
            raise MemberError(f"corrupt deflate data: {e}") from None
        if len(data) > member.size:
            raise MemberError(f"inflates past its declared size {member.size}")
        if not d.eof:
            raise MemberError(f"deflate data ends early ({len(data)} of {member.size} bytes)")
    else:
        raise MemberError(f"unsupported compression method {member.method}")
    if len(data) != member.size:
        raise MemberError(f"size mismatch: {len(data)} bytes, {member.size} declared")
    if member.crc is not None and zlib.crc32(data) != member.crc:
        raise MemberError(f"CRC mismatch: {zlib.crc32(data):08x}, {member.crc:08x} declared")
    return data


# ----------------------------------------------------------------------------------------------------------------------
# Safety


def unsafe_reason(member: Member, *, max_member_bytes: int) -> str | None:
    """Why a member must not be taken, or None. Directories are fine (there is nothing to write)."""
    name = member.name
    if not name:
        return "empty name"
    if name.startswith(("/", "\\")) or _DRIVE.match(name):
        return f"absolute path {name!r}"
    if ".." in re.split(r"[/\\]", name):
        return f"'..' component in {name!r} (path traversal)"
    if "\x00" in name:
        return "NUL in name"
    if "\\" in name:
        return f"backslash in name {name!r}"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return f"name is not valid UTF-8: {name!r}"
    if member.kind not in ("file", "dir"):
        return f"{member.kind} member"
    if member.encrypted:
        return "encrypted member"
    if member.size > max_member_bytes:
        return f"declared size {member.size} exceeds max_member_bytes {max_member_bytes}"
    if member.compressed_size > max_member_bytes:
        return f"compressed size {member.compressed_size} exceeds max_member_bytes {max_member_bytes}"
    return None


# ----------------------------------------------------------------------------------------------------------------------
# Names in rows and messages

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f\\\ud800-\udfff]")


def escape_name(name: str) -> str:
    """A member name as text every manifest, log line and store key can hold: bytes that are not UTF-8 (a tar read
    with ``surrogateescape`` keeps them as lone surrogates, which no encoder accepts), control characters and
    backslashes become ``%XX`` (each byte of the raw name). A clean name comes back unchanged."""
    if not _UNPRINTABLE.search(name):
        return name
    return _UNPRINTABLE.sub(
        lambda m: "".join(f"%{b:02X}" for b in m.group().encode("utf-8", "surrogateescape")), name
    )


def flat_name(name: str) -> str:
    """One path component standing for a member that is not taken (a row still records it): the escaped name with
    ``/`` as ``_``; ``.``, ``..`` and the empty name spelled out, so the row's path is one a store accepts."""
    flat = escape_name(name).replace("/", "_")
    return {"": "%EMPTY-NAME%", ".": "%2E", "..": "%2E%2E"}.get(flat, flat)


# ----------------------------------------------------------------------------------------------------------------------
# tar


class _TarFeed:
    """The decompressed tar stream as tarfile reads it.

    Counts bytes (for max_total_bytes), turns gzip failures into ArchiveError, and keeps the last bytes read so the
    block where tarfile stopped can be checked: tarfile treats end of data, a cut header and a corrupt header all as a
    normal end of archive.
    """

    _KEEP = 1024  # more than one header block behind the latest read

    def __init__(self, src: BinaryIO, limit: int | None):
        self._src = src
        self._limit = limit
        self.pos = 0
        self._tail = b""

    def read(self, n: int = -1) -> bytes:
        try:
            data = self._src.read() if n is None or n < 0 else _read_exact(self._src, n)
        except EOFError as e:
            raise ArchiveError(f"truncated archive: gzip stream ends early ({e})") from None
        except gzip.BadGzipFile as e:
            raise ArchiveError(f"bad gzip data: {e}") from None
        except zlib.error as e:
            raise ArchiveError(f"corrupt gzip data: {e}") from None
        self.pos += len(data)
        if self._limit is not None and self.pos > self._limit:
            raise ArchiveError(f"tar bomb: more than max_total_bytes {self._limit} uncompressed bytes")
        self._tail = self._tail[-self._KEEP :] + data
        return data

    def block_at(self, offset: int) -> bytes | None:
        start = self.pos - len(self._tail)
        if offset < start or offset + tarfile.BLOCKSIZE > self.pos:
            return None
        return self._tail[offset - start : offset - start + tarfile.BLOCKSIZE]


def _tar_kind(ti: tarfile.TarInfo) -> str:
    if ti.issym():
        return "symlink"
    if ti.islnk():
        return "hardlink"
    if ti.ischr() or ti.isblk():
        return "device"
    if ti.isdir():
        return "dir"
    if ti.isreg() and not ti.issparse():  # sparse data needs its map to make sense; no image is sparse
        return "file"
    return "other"


def _tar_error(e: tarfile.TarError, at_start: bool) -> ArchiveError:
    msg = str(e)
    if "unexpected end of data" in msg:
        return ArchiveError(f"truncated archive: {msg}")
    if at_start:
        return ArchiveError(f"not a tar archive: {msg}")
    return ArchiveError(f"corrupt tar archive: {msg}")


def iter_tar(
    stream: BinaryIO, *, compression: str, max_member_bytes: int, max_total_bytes: int | None = None
) -> Iterator[tuple[Member, bytes | None]]:
    """Yield every member of a tar or tar.gz read strictly forward, with its data when it is a safe regular file.

    Data is None for directories, links, special files and anything ``unsafe_reason`` rejects; the caller records the
    reason from ``unsafe_reason``. `max_total_bytes` caps the whole decompressed tar stream (headers included).
    """
    if compression not in ("", "gz"):
        raise ValueError(f"unsupported tar compression {compression!r} (use '' or 'gz')")
    # Decompress with gzip rather than tarfile's "r|gz": tarfile's stream treats a cut gzip as a clean end of data.
    src = gzip.GzipFile(fileobj=stream, mode="rb") if compression == "gz" else stream
    feed = _TarFeed(src, max_total_bytes)
    try:
        tf = tarfile.open(fileobj=feed, mode="r|", encoding="utf-8")  # type: ignore[call-overload]
    except tarfile.TarError as e:
        raise _tar_error(e, at_start=True) from None
    with tf:
        while True:
            try:
                ti = tf.next()
            except tarfile.TarError as e:
                raise _tar_error(e, at_start=False) from None
            if ti is None:
                break
            tf.members.clear()  # streaming mode keeps every TarInfo otherwise; archives hold millions
            if max_total_bytes is not None and ti.offset_data + ti.size > max_total_bytes:
                raise ArchiveError(
                    f"tar bomb: member {ti.name!r} would take the stream past max_total_bytes {max_total_bytes}"
                )
            member = Member(
                name=ti.name,
                offset=ti.offset if compression == "" else 0,
                compressed_size=ti.size,
                size=ti.size,
                method=-1,
                crc=None,
                kind=_tar_kind(ti),
            )
            data = None
            if member.kind == "file" and unsafe_reason(member, max_member_bytes=max_member_bytes) is None:
                try:
                    data = tf.extractfile(ti).read(ti.size)  # type: ignore[union-attr]
                except tarfile.TarError as e:
                    raise _tar_error(e, at_start=False) from None
                if len(data) != ti.size:
                    raise ArchiveError(
                        f"truncated archive: member {ti.name!r} has {len(data)} of {ti.size} bytes"
                    )
            yield member, data
            del data
        block = feed.block_at(tf.offset)
        if block is None:
            raise ArchiveError(
                f"truncated archive: the tar stream ends at byte {feed.pos} without an end-of-archive marker"
            )
        if block.count(0) != tarfile.BLOCKSIZE:
            raise ArchiveError(f"corrupt tar archive: invalid header at offset {tf.offset}")
    if compression == "gz":
        # Read the rest so gzip checks its CRC and length trailer; a cut there is still a truncated download.
        while feed.read(_SKIP_CHUNK):
            pass
