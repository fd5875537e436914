"""Tests for mgdata.archive: every archive is built here, with zipfile/tarfile or byte by byte for hostile ones."""

from __future__ import annotations

import gzip
import io
import random
import stat
import struct
import tarfile
import tracemalloc
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from mgdata.archive import (
    ArchiveError,
    Member,
    MemberError,
    Shard,
    inflate,
    iter_tar,
    iter_zip_shard,
    plan_zip_shards,
    read_zip_directory,
    unsafe_reason,
)
from mgdata.storage import LocalStore

MiB = 1024 * 1024
CAP = 64 * MiB
RATIO = 200.0

# --- builders -----------------------------------------------------------------------------------


def _payload(rng: random.Random, size: int) -> bytes:
    # Half random, half repetitive: deflate then really compresses some members and not others.
    if rng.random() < 0.5:
        return rng.randbytes(size)
    word = rng.randbytes(rng.randint(1, 16))
    return (word * (size // len(word) + 1))[:size]


def _zip_contents(n: int = 50, seed: int = 7) -> dict[str, tuple[bytes, int]]:
    rng = random.Random(seed)
    out = {}
    for i in range(n):
        size = rng.choice([0, 1, 100, 1000, 5000, 20_000, rng.randint(0, 40_000)])
        method = zipfile.ZIP_STORED if i % 3 == 0 else zipfile.ZIP_DEFLATED
        out[f"top/part{i % 4}/img_{i:03d}.jpg"] = (_payload(rng, size), method)
    return out


def _write_zip(path: Path, contents: dict[str, tuple[bytes, int]], *, dirs: bool = True) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        if dirs:
            zf.writestr("top/", b"")
        for name, (data, method) in contents.items():
            zf.writestr(name, data, compress_type=method)
    return path


class _NonSeekable(io.RawIOBase):
    """A write or read stream without seek/tell, like a socket or an S3 body."""

    def __init__(self, target: io.BytesIO):
        self._t = target

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, b) -> int:
        return self._t.write(b)

    def readinto(self, b) -> int:
        data = self._t.read(len(b))
        b[: len(data)] = data
        return len(data)


@dataclass
class _Entry:
    """One entry of a hand-made zip; `data` is what goes in the file (already compressed)."""

    name: bytes
    data: bytes
    method: int = 0
    flags: int = 0
    create_system: int = 0
    external_attr: int = 0
    local_extra: bytes = b""
    size: int | None = None
    crc: int | None = None


def _raw_zip(entries: list[_Entry], *, aliases: list[tuple[bytes, int]] = ()) -> bytes:
    """A zip byte by byte; `aliases` adds central-directory entries (name, index of the entry whose header they use)."""
    out = bytearray()
    central = []
    for e in entries:
        offset = len(out)
        size = len(e.data) if e.size is None else e.size
        crc = zlib.crc32(e.data) if e.crc is None else e.crc
        out += struct.pack(
            "<4s5H3L2H",
            b"PK\x03\x04",
            20,
            e.flags,
            e.method,
            0,
            0x21,
            crc,
            len(e.data),
            size,
            len(e.name),
            len(e.local_extra),
        )
        out += e.name + e.local_extra + e.data
        central.append((e, offset, size, crc))
    for name, index in aliases:
        e, offset, size, crc = central[index]
        central.append((_Entry(name, e.data, e.method), offset, size, crc))
    cd_start = len(out)
    for e, offset, size, crc in central:
        out += struct.pack(
            "<4s4B4HL2L5H2L",
            b"PK\x01\x02",
            20,
            e.create_system,
            20,
            0,
            e.flags,
            e.method,
            0,
            0x21,
            crc,
            len(e.data),
            size,
            len(e.name),
            0,
            0,
            0,
            0,
            e.external_attr,
            offset,
        )
        out += e.name
    out += struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, len(central), len(central), len(out) - cd_start, cd_start, 0
    )
    return bytes(out)


def _deflate(data: bytes) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return c.compress(data) + c.flush()


def _read_all_shards(
    path: Path, members: list[Member], shards: list[Shard], via: str
) -> list[tuple[str, bytes]]:
    got = []
    store = LocalStore(path.parent)
    for shard in shards:
        if via == "store":
            stream = store.open_range(path.name, shard.start, shard.end)
        else:
            stream = open(path, "rb")
            stream.seek(shard.start)
        with stream:
            for m, raw in iter_zip_shard(stream, shard.select(members), shard.start):
                assert unsafe_reason(m, max_member_bytes=CAP) is None
                got.append((m.name, inflate(m, raw, max_member_bytes=CAP, max_ratio=RATIO)))
    return got


def _zip_members(data: bytes) -> list[Member]:
    return read_zip_directory(io.BytesIO(data))


def _one_member(data: bytes, name: str) -> tuple[Member, bytes]:
    members = _zip_members(data)
    (m,) = [m for m in members if m.name == name]
    stream = io.BytesIO(data)
    stream.seek(m.offset)
    ((got, raw),) = list(iter_zip_shard(stream, [m], m.offset))
    return got, raw


def _tar_bytes(build, *, gz: bool = False, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=fmt) as tf:
        build(tf)
    return buf.getvalue()


def _add(tf: tarfile.TarFile, name: str, data: bytes = b"", **attrs) -> None:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    for k, v in attrs.items():
        setattr(ti, k, v)
    tf.addfile(ti, io.BytesIO(data) if data else None)


def _tar_list(data: bytes, compression: str = "", **kw) -> list[tuple[Member, bytes | None]]:
    kw.setdefault("max_member_bytes", CAP)
    return list(iter_tar(io.BufferedReader(_NonSeekable(io.BytesIO(data))), compression=compression, **kw))


# --- zip: directory, plan, shards, inflate --------------------------------------------------------


@pytest.mark.parametrize("via", ["file", "store"])
def test_zip_round_trip_through_shards(tmp_path: Path, via: str) -> None:
    contents = _zip_contents()
    path = _write_zip(tmp_path / "a.zip", contents)
    with open(path, "rb") as f:
        members = read_zip_directory(f)
    assert [m.offset for m in members] == sorted(m.offset for m in members)
    assert len(members) == len(contents) + 1 and members[0].kind == "dir"

    shards = plan_zip_shards(members, shard_bytes=40_000, max_shards=256)
    assert len(shards) > 3
    assert [s.index for s in shards] == list(range(len(shards)))
    assert shards[0].start == members[0].offset and shards[0].first == 0
    for a, b in zip(shards, shards[1:], strict=False):
        assert a.end == b.start and a.first + a.count == b.first
    assert sum(s.count for s in shards) == len(members)
    with zipfile.ZipFile(path) as zf:
        cd_start = zf.start_dir
    assert shards[-1].end == cd_start  # the last member's span runs up to the central directory

    got = _read_all_shards(path, members, shards, via)
    assert got == [(name, data) for name, (data, _) in contents.items()]


def test_zip_member_fields(tmp_path: Path) -> None:
    data = b"hello " * 1000
    path = _write_zip(tmp_path / "a.zip", {"x/é.jpg": (data, zipfile.ZIP_DEFLATED)}, dirs=False)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("x/é.jpg")
    (m,) = read_zip_directory(open(path, "rb"))
    assert (m.name, m.offset, m.size, m.method, m.kind, m.encrypted) == (
        "x/é.jpg",
        0,
        len(data),
        8,
        "file",
        False,
    )
    assert (m.compressed_size, m.crc) == (info.compress_size, info.CRC)


def test_plan_max_shards_is_respected() -> None:
    members = [Member(f"m{i}", i * 1000, 970, 970, 0, 0, "file", span_end=(i + 1) * 1000) for i in range(50)]
    shards = plan_zip_shards(members, shard_bytes=1, max_shards=4)
    assert 1 <= len(shards) <= 4
    assert sum(s.count for s in shards) == 50
    assert shards[0].start == 0 and shards[-1].end == 50_000
    for a, b in zip(shards, shards[1:], strict=False):
        assert a.end == b.start
    # The grown budget is the smallest that fits, so the shards come out even.
    assert max(s.count for s in shards) == 13
    assert len(plan_zip_shards(members, shard_bytes=1, max_shards=1)) == 1


def test_plan_edge_cases() -> None:
    assert plan_zip_shards([], shard_bytes=10, max_shards=4) == []
    big = [
        Member("a", 0, 10, 10, 0, 0, "file", span_end=40),
        Member("b", 40, 500, 500, 0, 0, "file", span_end=600),
    ]
    shards = plan_zip_shards(
        big + [Member("c", 600, 5, 5, 0, 0, "file", span_end=650)], shard_bytes=100, max_shards=9
    )
    assert [(s.first, s.count, s.start, s.end) for s in shards] == [
        (0, 1, 0, 40),
        (1, 1, 40, 600),
        (2, 1, 600, 650),
    ]
    assert plan_zip_shards(big, shard_bytes=10**9, max_shards=9) == [Shard(0, 0, 600, 0, 2)]
    with pytest.raises(ValueError, match="sorted"):
        plan_zip_shards(big[::-1], shard_bytes=10, max_shards=4)


def test_zip64_forced_members(tmp_path: Path) -> None:
    contents = _zip_contents(12, seed=3)
    path = tmp_path / "z64.zip"
    with zipfile.ZipFile(path, "w", allowZip64=True) as zf:
        for name, (data, method) in contents.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = method
            with zf.open(info, "w", force_zip64=True) as w:
                w.write(data)
    with open(path, "rb") as f:
        members = read_zip_directory(f)
    # force_zip64 puts a Zip64 extra in every local header only, so local and central extra lengths differ.
    shards = plan_zip_shards(members, shard_bytes=20_000, max_shards=64)
    assert len(shards) > 1
    assert _read_all_shards(path, members, shards, "store") == [(n, d) for n, (d, _) in contents.items()]


def test_zip64_end_records_and_central_extras(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Lower zipfile's limits while writing so a small file gets real Zip64 structures: 0xFFFFFFFF sizes and offsets
    # in the central directory, and the Zip64 end of central directory record and locator.
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 1000)
    monkeypatch.setattr(zipfile, "ZIP_FILECOUNT_LIMIT", 5)
    contents = _zip_contents(20, seed=5)
    path = _write_zip(tmp_path / "z64.zip", contents)
    monkeypatch.undo()
    raw = path.read_bytes()
    assert b"PK\x06\x06" in raw and b"PK\x06\x07" in raw and b"\xff\xff\xff\xff" in raw
    with open(path, "rb") as f:
        members = read_zip_directory(f)
    shards = plan_zip_shards(members, shard_bytes=30_000, max_shards=64)
    assert _read_all_shards(path, members, shards, "file") == [(n, d) for n, (d, _) in contents.items()]


def test_data_descriptor_zip(tmp_path: Path) -> None:
    contents = _zip_contents(30, seed=11)
    buf = io.BytesIO()
    with zipfile.ZipFile(_NonSeekable(buf), "w") as zf:
        for name, (data, method) in contents.items():
            zf.writestr(name, data, compress_type=method)
    path = tmp_path / "dd.zip"
    path.write_bytes(buf.getvalue())
    with zipfile.ZipFile(path) as zf:
        assert all(i.flag_bits & 0x08 for i in zf.infolist())
    # Local headers of such zips carry zero sizes; ours come from the central directory.
    assert struct.unpack_from("<L", path.read_bytes(), 18)[0] == 0
    with open(path, "rb") as f:
        members = read_zip_directory(f)
    shards = plan_zip_shards(members, shard_bytes=25_000, max_shards=64)
    assert len(shards) > 1
    assert _read_all_shards(path, members, shards, "store") == [(n, d) for n, (d, _) in contents.items()]


def test_inflate_in_threads(tmp_path: Path) -> None:
    contents = _zip_contents(40, seed=13)
    path = _write_zip(tmp_path / "a.zip", contents, dirs=False)
    members = read_zip_directory(open(path, "rb"))
    with open(path, "rb") as f:
        pairs = list(iter_zip_shard(f, members, 0))
    with ThreadPoolExecutor(4) as pool:
        out = list(pool.map(lambda p: inflate(p[0], p[1], max_member_bytes=CAP, max_ratio=RATIO), pairs))
    assert out == [d for d, _ in contents.values()]


# --- zip: hostile ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../evil.jpg", "'..' component"),
        ("a/../../evil.jpg", "'..' component"),
        ("a\\..\\evil.jpg", "'..' component"),
        ("/etc/x.jpg", "absolute path"),
        ("C:\\x", "absolute path"),
        ("c:x.jpg", "absolute path"),
        ("\\\\host\\share\\x.jpg", "absolute path"),
        ("a\x00b.jpg", "NUL in name"),
        ("a\\b.jpg", "backslash"),
        ("a/\udcff.jpg", "not valid UTF-8"),
        ("", "empty name"),
        ("top/ok.jpg", None),
        ("..hidden/ok..jpg", None),
    ],
)
def test_unsafe_names(name: str, reason: str | None) -> None:
    got = unsafe_reason(Member(name, 0, 10, 10, 0, 0, "file"), max_member_bytes=CAP)
    assert got is None if reason is None else reason in got


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "device", "other"])
def test_unsafe_kinds(kind: str) -> None:
    assert unsafe_reason(Member("a.jpg", 0, 1, 1, 0, 0, kind), max_member_bytes=CAP) == f"{kind} member"


def test_unsafe_sizes_and_dirs() -> None:
    assert unsafe_reason(Member("d", 0, 0, 0, 0, 0, "dir"), max_member_bytes=CAP) is None
    assert "declared size 101" in unsafe_reason(Member("a", 0, 5, 101, 8, 0, "file"), max_member_bytes=100)
    assert "compressed size 101" in unsafe_reason(Member("a", 0, 101, 50, 8, 0, "file"), max_member_bytes=100)


def test_hostile_zip_members_are_flagged(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("link.jpg")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    fifo = zipfile.ZipInfo("fifo.jpg")
    fifo.create_system = 3
    fifo.external_attr = (stat.S_IFIFO | 0o644) << 16
    udir = zipfile.ZipInfo("unixdir")
    udir.create_system = 3
    udir.external_attr = (stat.S_IFDIR | 0o755) << 16
    plain = zipfile.ZipInfo("ok.jpg")
    plain.create_system = 3
    plain.external_attr = (stat.S_IFREG | 0o644) << 16
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../evil.jpg", b"x")
        zf.writestr("/etc/x.jpg", b"x")
        zf.writestr(link, b"/etc/passwd")
        zf.writestr(fifo, b"")
        zf.writestr(udir, b"")
        zf.writestr(plain, b"fine")
    members = {m.name: m for m in _zip_members(buf.getvalue())}
    reasons = {n: unsafe_reason(m, max_member_bytes=CAP) for n, m in members.items()}
    assert "'..' component" in reasons["../evil.jpg"]
    assert "absolute path" in reasons["/etc/x.jpg"]
    assert reasons["link.jpg"] == "symlink member"
    assert reasons["fifo.jpg"] == "other member"
    assert members["unixdir"].kind == "dir" and reasons["unixdir"] is None
    assert reasons["ok.jpg"] is None
    # The shard reader still hands them over (the caller records the reason); the dir is skipped.
    stream = io.BytesIO(buf.getvalue())
    names = [m.name for m, _ in iter_zip_shard(stream, list(members.values()), 0)]
    assert names == ["../evil.jpg", "/etc/x.jpg", "link.jpg", "fifo.jpg", "ok.jpg"]


def test_encrypted_flag_and_nul_name() -> None:
    data = _raw_zip(
        [_Entry(b"secret.jpg", b"0123456789ab" + b"x" * 20, flags=0x1), _Entry(b"a\x00.jpg", b"x")]
    )
    enc, nul = _zip_members(data)
    assert enc.encrypted and unsafe_reason(enc, max_member_bytes=CAP) == "encrypted member"
    assert nul.name == "a\x00.jpg" and unsafe_reason(nul, max_member_bytes=CAP) == "NUL in name"


def test_ratio_bomb() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb.jpg", bytes(3 * MiB))
        zf.writestr("blank.png", bytes(MiB))  # small: any ratio is fine
    m, raw = _one_member(buf.getvalue(), "bomb.jpg")
    assert m.size / m.compressed_size > RATIO
    with pytest.raises(MemberError, match="ratio"):
        inflate(m, raw, max_member_bytes=CAP, max_ratio=RATIO)
    m, raw = _one_member(buf.getvalue(), "blank.png")
    assert inflate(m, raw, max_member_bytes=CAP, max_ratio=RATIO) == bytes(MiB)


def test_member_over_cap() -> None:
    data = random.Random(1).randbytes(300_000)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("big.jpg", data)
    m, raw = _one_member(buf.getvalue(), "big.jpg")
    with pytest.raises(MemberError, match="exceeds max_member_bytes 100000"):
        inflate(m, raw, max_member_bytes=100_000, max_ratio=RATIO)
    # With the cap, the shard reader does not even buffer it.
    stream = io.BytesIO(buf.getvalue())
    ((got, raw),) = list(iter_zip_shard(stream, [m], 0, max_member_bytes=100_000))
    assert raw == b"" and "exceeds max_member_bytes" in unsafe_reason(got, max_member_bytes=100_000)


def test_member_lying_about_its_size_is_not_expanded() -> None:
    bomb = _deflate(bytes(50 * MiB))
    m = Member("liar.jpg", 0, len(bomb), 1000, 8, 0, "file")  # claims 1000 bytes: under the ratio-free size
    tracemalloc.start()
    try:
        with pytest.raises(MemberError, match="inflates past its declared size 1000"):
            inflate(m, bomb, max_member_bytes=CAP, max_ratio=RATIO)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MiB


def test_crc_mismatch(tmp_path: Path) -> None:
    data = b"0123456789" * 100
    raw = bytearray(_raw_zip([_Entry(b"a.jpg", data)]))
    raw[30 + 5 + 17] ^= 0xFF  # a byte of the stored data
    m, got = _one_member(bytes(raw), "a.jpg")
    with pytest.raises(MemberError, match="CRC mismatch"):
        inflate(m, got, max_member_bytes=CAP, max_ratio=RATIO)


def test_corrupt_and_short_deflate() -> None:
    data = random.Random(2).randbytes(5000) * 3
    packed = _deflate(data)
    m = Member("a", 0, len(packed), len(data), 8, zlib.crc32(data), "file")
    assert inflate(m, packed, max_member_bytes=CAP, max_ratio=RATIO) == data
    cut = packed[: len(packed) // 2]
    with pytest.raises(MemberError, match="ends early"):
        inflate(
            Member("a", 0, len(cut), len(data), 8, None, "file"), cut, max_member_bytes=CAP, max_ratio=RATIO
        )
    with pytest.raises(MemberError, match="corrupt deflate"):
        inflate(
            Member("a", 0, 4, 10, 8, None, "file"), b"\xff\xff\xff\xff", max_member_bytes=CAP, max_ratio=RATIO
        )
    with pytest.raises(MemberError, match="size mismatch"):
        inflate(Member("a", 0, 3, 4, 0, None, "file"), b"abc", max_member_bytes=CAP, max_ratio=RATIO)
    with pytest.raises(MemberError, match="expected 9 compressed bytes"):
        inflate(Member("a", 0, 9, 3, 0, None, "file"), b"abc", max_member_bytes=CAP, max_ratio=RATIO)


def test_unsupported_method() -> None:
    with pytest.raises(MemberError, match="unsupported compression method 12"):
        inflate(Member("a.jpg", 0, 3, 3, 12, None, "file"), b"abc", max_member_bytes=CAP, max_ratio=RATIO)


def test_overlapping_entries() -> None:
    data = _raw_zip([_Entry(b"a.jpg", b"A" * 100), _Entry(b"b.jpg", b"B" * 100)], aliases=[(b"c.jpg", 0)])
    with pytest.raises(ArchiveError, match="overlapping entries"):
        _zip_members(data)


def test_overlap_hidden_by_a_long_local_extra() -> None:
    # The central directory leaves just enough room; the local header's extra field (invisible there) pushes the
    # data into the next entry. Only the shard reader, which reads local headers, can see it.
    e = [_Entry(b"a.jpg", b"A" * 10, local_extra=b"\x00" * 8), _Entry(b"b.jpg", b"B" * 10)]
    raw = bytearray(_raw_zip(e))
    struct.pack_into("<H", raw, 28, 8 + 30)  # a's local extra now swallows the start of b
    members = _zip_members(bytes(raw))
    with pytest.raises(ArchiveError, match="overlapping entries"):
        list(iter_zip_shard(io.BytesIO(bytes(raw)), members, 0))


def test_truncated_central_directory(tmp_path: Path) -> None:
    path = _write_zip(tmp_path / "a.zip", _zip_contents(10))
    whole = path.read_bytes()
    for cut in (10, 60):
        with pytest.raises(ArchiveError, match="truncated or corrupt zip"):
            _zip_members(whole[:-cut])


def test_not_a_zip(tmp_path: Path) -> None:
    with pytest.raises(ArchiveError, match="not a zip archive"):
        _zip_members(b"<html>404 not found</html>" * 50)
    with pytest.raises(ArchiveError, match="not a zip archive"):
        _zip_members(b"")


def test_shard_stream_problems(tmp_path: Path) -> None:
    path = _write_zip(tmp_path / "a.zip", _zip_contents(10), dirs=False)
    data = path.read_bytes()
    members = read_zip_directory(io.BytesIO(data))
    with pytest.raises(ArchiveError, match="truncated archive"):
        list(iter_zip_shard(io.BytesIO(data[: members[-1].offset + 40]), members, 0))
    # A shard started at the wrong place meets something that is not a local header.
    stream = io.BytesIO(data)
    stream.seek(1)
    with pytest.raises(ArchiveError, match="bad local header for member"):
        list(iter_zip_shard(stream, members[1:], members[1].offset))
    with pytest.raises(ArchiveError, match="overlapping entries"):
        list(iter_zip_shard(io.BytesIO(data), members[1:], members[1].offset + 1))


# --- tar ------------------------------------------------------------------------------------------


def _tree(tf: tarfile.TarFile) -> None:
    _add(tf, "top", type=tarfile.DIRTYPE, mode=0o755)
    _add(tf, "top/a.jpg", b"A" * 1000)
    _add(tf, "top/sub", type=tarfile.DIRTYPE)
    _add(tf, "top/sub/b.jpg", bytes(range(256)) * 40)
    _add(tf, "top/sub/" + "long_name_" * 20 + ".jpg", b"long")  # needs a pax header
    _add(tf, "top/empty.jpg", b"")


@pytest.mark.parametrize("compression", ["", "gz"])
def test_iter_tar_names_as_stored(tmp_path: Path, compression: str) -> None:
    data = _tar_bytes(_tree, gz=compression == "gz")
    (tmp_path / "t").write_bytes(data)
    with LocalStore(tmp_path).open_range("t") as stream:  # forward-only
        got = list(iter_tar(stream, compression=compression, max_member_bytes=CAP))
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        expected = [(ti.name, ti.offset, tf.extractfile(ti).read() if ti.isreg() else None) for ti in tf]
    assert [(m.name, d) for m, d in got] == [(n, d) for n, _, d in expected]
    assert [m.name for m, _ in got][:2] == ["top", "top/a.jpg"]
    assert [m.kind for m, _ in got] == ["dir", "file", "dir", "file", "file", "file"]
    offsets = [m.offset for m, _ in got]
    assert offsets == ([o for _, o, _ in expected] if compression == "" else [0] * 6)
    assert all(m.method == -1 and m.crc is None and m.size == m.compressed_size for m, _ in got)


def test_iter_tar_hostile_members() -> None:
    def build(tf: tarfile.TarFile) -> None:
        _add(tf, "ok.jpg", b"ok")
        _add(tf, "link.jpg", type=tarfile.SYMTYPE, linkname="/etc/passwd")
        _add(tf, "hard.jpg", type=tarfile.LNKTYPE, linkname="ok.jpg")
        _add(tf, "dev.jpg", type=tarfile.CHRTYPE, devmajor=1, devminor=3)
        _add(tf, "blk.jpg", type=tarfile.BLKTYPE, devmajor=8, devminor=0)
        _add(tf, "fifo.jpg", type=tarfile.FIFOTYPE)
        _add(tf, "../evil.jpg", b"evil")
        _add(tf, "/abs.jpg", b"abs")
        _add(tf, "big.jpg", b"x" * 5000)

    got = _tar_list(_tar_bytes(build), max_member_bytes=4096)
    reasons = {m.name: (unsafe_reason(m, max_member_bytes=4096), d) for m, d in got}
    assert reasons["ok.jpg"] == (None, b"ok")
    assert reasons["link.jpg"] == ("symlink member", None)
    assert reasons["hard.jpg"] == ("hardlink member", None)
    assert reasons["dev.jpg"] == ("device member", None)
    assert reasons["blk.jpg"] == ("device member", None)
    assert reasons["fifo.jpg"] == ("other member", None)
    assert "'..' component" in reasons["../evil.jpg"][0] and reasons["../evil.jpg"][1] is None
    assert "absolute path" in reasons["/abs.jpg"][0] and reasons["/abs.jpg"][1] is None
    assert "exceeds max_member_bytes 4096" in reasons["big.jpg"][0] and reasons["big.jpg"][1] is None


def test_tar_gz_truncated_in_the_middle() -> None:
    rng = random.Random(4)
    data = _tar_bytes(lambda tf: [_add(tf, f"m{i}.jpg", rng.randbytes(20_000)) for i in range(10)], gz=True)
    with pytest.raises(ArchiveError, match="truncated archive"):
        _tar_list(data[: len(data) // 2], "gz")
    with pytest.raises(ArchiveError, match="truncated archive"):
        _tar_list(data[:-4], "gz")  # only the gzip trailer (ISIZE) is missing


def test_plain_tar_truncations() -> None:
    data = _tar_bytes(
        lambda tf: [_add(tf, f"m{i}.jpg", b"z" * 1500) for i in range(4)], fmt=tarfile.USTAR_FORMAT
    )
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        offsets = [ti.offset for ti in tf]
    # Mid-data, mid-header, and exactly between two members (tarfile alone would call that a complete archive).
    for cut in (offsets[2] + 512 + 700, offsets[2] + 100, offsets[2]):
        with pytest.raises(ArchiveError, match="truncated archive"):
            _tar_list(data[:cut])
    assert len(_tar_list(data)) == 4


def test_tar_corrupt_header_mid_archive() -> None:
    data = bytearray(_tar_bytes(lambda tf: [_add(tf, f"m{i}.jpg", b"z" * 100) for i in range(3)]))
    with tarfile.open(fileobj=io.BytesIO(bytes(data))) as tf:
        third = [ti.offset for ti in tf][2]
    data[third + 148] ^= 0x01  # the header checksum
    with pytest.raises(ArchiveError, match="corrupt tar archive"):
        _tar_list(bytes(data))


def test_tar_bomb() -> None:
    big = _tar_bytes(lambda tf: _add(tf, "zeros.jpg", bytes(10 * MiB)), gz=True)
    assert len(big) < 100_000
    with pytest.raises(ArchiveError, match="tar bomb"):
        _tar_list(big, "gz", max_total_bytes=MiB)
    many = _tar_bytes(lambda tf: [_add(tf, f"z{i}.jpg", bytes(100_000)) for i in range(30)], gz=True)
    with pytest.raises(ArchiveError, match="tar bomb"):
        _tar_list(many, "gz", max_total_bytes=MiB)
    assert len(_tar_list(many, "gz", max_total_bytes=10 * MiB)) == 30
    # Metadata counts too: tarfile buffers a pax header whole, so a huge one is stopped while it is being read.
    pax = _tar_bytes(lambda tf: _add(tf, "a.jpg", b"a", pax_headers={"comment": "x" * (2 * MiB)}), gz=True)
    with pytest.raises(ArchiveError, match="more than max_total_bytes"):
        _tar_list(pax, "gz", max_total_bytes=MiB)


def test_not_a_tar() -> None:
    with pytest.raises(ArchiveError, match="bad gzip data"):
        _tar_list(b"PK\x03\x04 definitely a zip" * 30, "gz")
    with pytest.raises(ArchiveError, match="not a tar archive"):
        _tar_list(b"<html>not found</html>" * 50)
    with pytest.raises(ArchiveError, match="not a tar archive"):
        _tar_list(gzip.compress(b""), "gz")
    with pytest.raises(ValueError, match="unsupported tar compression"):
        _tar_list(b"", "bz2")
