"""Extract and validate in one pass, one shard at a time.

`shard_file` reads an archive's directory (zip central directory; a tar is one shard since it can only be streamed)
and writes each shard's member list to `work/`. `extract` streams one shard's byte range from the store, and for every
member, in a thread pool (zlib, hashlib and Pillow's decoders release the GIL): inflate and check it, hash it, decode
it for the trainer's verdict (a JPEG at 1/8 scale, which decides the same; `images.py`), write it under
`data/<layout path>` (or `quarantine/<source>/` with the reason), and produce its manifest row. A zip shard of some
size on a local store is cut among forked worker processes, each reading a contiguous part of its byte range
(`worker_parts`): threads of one process, sharing its interpreter lock, left part of a core idle. The rows go to one
small Parquet part per shard, written after one flush of the store (`Store.sync`) rather than an fsync per image: the
part is the shard's commit record.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import multiprocessing
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict

from mgdata import manifest
from mgdata.archive import (
    ArchiveError,
    Member,
    MemberError,
    Shard,
    escape_name,
    flat_name,
    inflate,
    iter_tar,
    iter_zip_shard,
    plan_zip_shards,
    read_zip_directory,
    unsafe_reason,
)
from mgdata.catalog import RemoteFile
from mgdata.forked import WorkerDied, forked_map
from mgdata.images import DEFAULT_MAX_PIXELS, check_image
from mgdata.run import Run, SourceFailed, raw_key
from mgdata.settings import env_int, usable_cores
from mgdata.storage import StoreError, UnstorableKey, check_key, libc_or_none

log = logging.getLogger("mgdata.extract")


def extract_threads() -> int:
    """Threads per extract task: `MGDATA_EXTRACT_THREADS`, else twice the cores this process may run on (store I/O
    overlaps decoding).

    Under an executor that runs one extract task per core at once (LocalExecutor, a Celery worker with
    concurrency = cores), 2 is enough: the task processes already use every core."""
    return env_int("MGDATA_EXTRACT_THREADS", max(2, usable_cores() * 2))


NAME_MAX = 255  # bytes per path component on every common filesystem (ext4, XFS, APFS, NTFS in UTF-16 units)
PATH_MAX = 1000  # bytes of a data/ path: S3 keys stop at 1024, with room for the store's prefix


def decode_budget() -> int:
    """Pixels being decoded at once per extract task: `MGDATA_DECODE_MPIXELS` million, else the per-image limit
    (`images.DEFAULT_MAX_PIXELS`, 89.5 Mpx), so one image of the largest size allowed decodes alone while
    ordinary images (0.3-2 Mpx) run on every thread. Pillow holds a decoded RGB or RGBA pixel in 4 bytes, which
    puts decoding at about 360 MB (twice that while a mismatched format is re-encoded to its extension's)."""
    mpx = env_int("MGDATA_DECODE_MPIXELS", 0)
    return mpx * 1_000_000 if mpx > 0 else DEFAULT_MAX_PIXELS


class PixelBudget:
    """A semaphore weighted by pixels: a decode of w x h pixels waits until that many are free. Requests are served
    in arrival order (a large image is not starved by a stream of small ones); one larger than the whole budget
    runs alone. Its counters and lock live in shared memory, so the worker processes an extract forks after it is
    made (`forked.forked_map`) draw on the same budget as the threads of the process that made it.

    Built to survive a worker killed at any point. A waiter polls (0.5 ms, backing off to 10 ms) instead of sleeping
    on a condition, whose notify would wait for a dead sleeper's wake-up for ever. A worker killed while queued or
    holding would leave its ticket or its pixels taken for good: `abandon()` then lets every waiter through, and
    `pixel_budget` makes a new budget for the extracts that follow. The lock is held only for a few counter updates;
    a waiter gives up on it once the budget is abandoned."""

    def __init__(self, limit: int):
        self.limit = limit
        fork = multiprocessing.get_context("fork")
        self._counters = fork.RawArray("q", 4)  # pixels in use, next ticket, ticket being served, abandoned
        self._lock = fork.Lock()

    @property
    def used(self) -> int:
        return self._counters[0]

    def _locked(self) -> bool:
        """Take the lock, or False once the budget is abandoned (its holder may be dead)."""
        while not self._lock.acquire(timeout=0.05):
            if self._counters[3]:
                return False
        return True

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = max(0, min(pixels, self.limit))
        c, ticket, held, pause = self._counters, None, False, 0.0005
        while not c[3] and self._locked():
            try:
                if ticket is None:
                    ticket, c[1] = c[1], c[1] + 1
                if c[2] == ticket and c[0] + pixels <= self.limit:
                    c[2], c[0], held = c[2] + 1, c[0] + pixels, True
            finally:
                self._lock.release()
            if held:
                break
            time.sleep(pause)
            pause = min(2 * pause, 0.01)
        try:
            yield
        finally:
            if held and self._locked():
                c[0] -= pixels
                self._lock.release()

    def abandon(self) -> None:
        """Let every waiter through, now and from now on: a process that drew on the budget is gone. One aligned
        store, taken without the lock (which the dead process may hold)."""
        self._counters[3] = 1
        pixel_budget.cache_clear()


@functools.cache
def pixel_budget(limit: int) -> PixelBudget:
    """The process's decode budget: extracts running at once in one process (`ingest.extract_shards` overlaps two
    shards) share it, so decoding memory stays bounded per process, not per shard."""
    return PixelBudget(limit)


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


@functools.cache
def return_large_buffers() -> None:
    """Make glibc give every buffer of 8 MiB or more back to the system when it is freed (once per process).

    By default glibc raises its mmap threshold to the size of each large block freed (up to 32 MB), after which
    the 16 MB blocks Pillow decodes into come from a per-thread heap that keeps them: with 4 threads each holding
    one huge image's worth, nine 88 Mpx PNGs peaked at 715 MB even when decoded one at a time (433 MB with a
    fixed threshold). Ordinary images (a few MB) stay below it."""
    libc = libc_or_none()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(_M_MMAP_THRESHOLD, 8 * 1024 * 1024)


class Inflight:
    """Calls on a thread pool, at most `limit` of them pending so memory stays bounded, whose results are kept in
    submission order. Without a pool each call runs at once, in the caller's thread."""

    def __init__(self, pool: ThreadPoolExecutor | None, limit: int):
        self.pool, self.limit = pool, limit
        self.done: list = []
        self._pending: deque[Future] = deque()

    def submit(self, fn, *args) -> Future | None:
        if self.pool is None:
            self.done.append(fn(*args))
            return None
        future = self.pool.submit(fn, *args)
        self._pending.append(future)
        while len(self._pending) > self.limit:
            self.done.append(self._pending.popleft().result())
        return future

    def drain(self) -> list:
        """Every result, once every call has ended (the first error is raised after that)."""
        try:
            while self._pending:
                self.done.append(self._pending.popleft().result())
        finally:
            for future in self._pending:
                future.cancel()
        done, self.done = self.done, []
        return done


def extract_processes() -> int:
    """Worker processes per zip shard on a store they may share (a local folder): `MGDATA_EXTRACT_PROCESSES`, else
    the cores this process may run on; never more than the task's threads (`extract_threads`), which they share out,
    so a task runs as many members at once either way; 1 keeps a shard in one process.

    Threads of one process share its interpreter lock, and with images of about 160 KB each a dozen lock hand-offs
    per image (read, inflate, decode, hash, write) left 0.2-0.4 of a core idle on 2 cores whatever the thread count.
    Forked workers, each reading its own byte range of the shard, keep every core busy. Where an executor runs one
    extract task per core at once (LocalExecutor, a Celery worker at concurrency = cores, with
    `MGDATA_EXTRACT_THREADS=2`) each task forks two workers of one thread: busy cores while the last shard runs
    alone, and no more processes than threads before."""
    return max(1, min(env_int("MGDATA_EXTRACT_PROCESSES", usable_cores()), extract_threads()))


# a worker process's least share of a shard (about 100 photos, a quarter second of work): a smaller one is not
# worth a fork
FORK_MIN_BYTES = 16 * 1024 * 1024


def worker_parts(members: list[Member], start: int, end: int) -> list[Shard]:
    """The shard cut into one contiguous byte range per worker process, of at least `FORK_MIN_BYTES` each; []
    when the shard is to stay in this process."""
    count = min(extract_processes(), (end - start) // FORK_MIN_BYTES, len(members))
    if count < 2:
        return []
    return plan_zip_shards(members, shard_bytes=-(-(end - start) // count), max_shards=count)


def path_problem(path: str) -> str | None:
    """Why a data/ path cannot be held by a filesystem the trainer reads from (or by S3), or None."""
    raw = path.encode("utf-8", "surrogateescape")
    longest = max(raw.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        return f"a path component of {len(longest)} bytes (filesystems hold at most {NAME_MAX})"
    if len(raw) > PATH_MAX:
        return f"a path of {len(raw)} bytes (at most {PATH_MAX}: S3 keys stop at 1024)"
    return None


class PathClaims:
    """Paths of one archive in archive order. A path that is also a folder of an earlier member's path, or that
    runs through an earlier member's file, cannot exist beside it on a filesystem (S3 would take both, the data/
    tree could not): the earlier member keeps it, the later one is refused, whatever the store."""

    def __init__(self) -> None:
        self._files: set[str] = set()
        self._folders: set[str] = set()

    def claim(self, path: str) -> str | None:
        """Take `path`; return why it clashes with an earlier one instead (then nothing is taken)."""
        if path in self._folders:
            return f"{path!r} is also a folder of an earlier member's path (a file and a folder of one name)"
        parts = path.split("/")
        folders = ["/".join(parts[:i]) for i in range(1, len(parts))]
        for d in folders:
            if d in self._files:
                return f"{d!r} is an earlier member's file, so it cannot be a folder (a file and a folder of one name)"
        self._files.add(path)
        self._folders.update(folders)
        return None


def shard_file(run: Run, source: str, f: RemoteFile, *, retry_dead: bool = False) -> list[str]:
    """`retry_dead` (URL lists): shard only the ids whose last row is missing or invalid, and keep the other parts;
    the new parts sort after them, so their rows win in the merge."""
    store, d = run.store, run.catalog.defaults
    key = raw_key(source, f.name)
    prefix = f"retry{time.time_ns()}-" if retry_dead else ""
    if not retry_dead:
        store.delete_prefix(manifest.parts_prefix(source, f.name))
    if f.archive == "urllist":
        from mgdata.fetch.urllist import read_url_list, url_shards

        try:
            items = read_url_list(store.read_bytes(key), label=f"source {source!r}, file {f.name}")
        except ValueError as e:
            raise SourceFailed(str(e)) from e
        dead: dict[str, dict] = {}
        if retry_dead:
            dead = manifest.unusable_rows(manifest.read_table(store, manifest.source_key(source)))
            items = [(i, u) for i, u in items if f"{f.target}/{i}.jpg" in dead]
        elif not run.force:
            items = _carry_over(store, source, f, items)
        specs = [
            {"file": f.name, "archive": "urllist", "retry": retry_dead, "items": c}
            for c in url_shards(items, max_shards=d.max_shards)
        ]
        for spec in specs if retry_dead else ():
            # the rows a retry shard may replace: one that changes none writes nothing
            spec["previous"] = {p: dead[p] for i, _ in spec["items"] if (p := f"{f.target}/{i}.jpg") in dead}
        log.info(
            "%s/%s: %d URLs in %d shards%s", source, f.name, len(items), len(specs), " (retry)" * retry_dead
        )
    elif f.archive == "zip":
        try:
            with store.open_seekable(key) as fh:
                members = read_zip_directory(fh)
        except ArchiveError as e:
            raise SourceFailed(f"source {source!r}, file {f.name}: {e}") from e
        mapped = [(m, f.map_member(m.name)) for m in members if m.kind != "dir"]
        mapped = [(m, t) for m, t in mapped if t or unsafe_reason(m, max_member_bytes=d.max_member_bytes)]
        wanted, targets = [m for m, _ in mapped], [t for _, t in mapped]
        # Members landing on one path (duplicate names): the last in the central directory wins, as with `unzip -o`
        # and Python's zipfile; the earlier ones are not extracted, so the object and its manifest row always agree
        # whatever the thread or shard order.
        last = {t: i for i, t in enumerate(targets) if t}
        kept = [m for i, (m, t) in enumerate(zip(wanted, targets, strict=True)) if not t or last[t] == i]
        if len(kept) < len(wanted):
            log.warning(
                "%s/%s: %d member(s) shadowed by a later one of the same name",
                source,
                f.name,
                len(wanted) - len(kept),
            )
            wanted = kept
        claims, refused = PathClaims(), {}
        for m, t in zip(wanted, (f.map_member(m.name) for m in wanted), strict=True):
            if t and (why := path_problem(t) or claims.claim(t)):
                refused[m.name] = why
        taken = {id(m) for m in wanted}  # rows to come; every other member is a counted skip
        record_skipped(store, source, f, [m for m in members if id(m) not in taken])
        shards = plan_zip_shards(wanted, shard_bytes=d.shard_bytes, max_shards=d.max_shards)
        specs = [
            {
                "file": f.name,
                "archive": "zip",
                "start": s.start,
                "end": s.end,
                "members": [asdict(m) for m in wanted[s.first : s.first + s.count]],
                "refused": {
                    m.name: refused[m.name] for m in wanted[s.first : s.first + s.count] if m.name in refused
                },
            }
            for s in shards
        ]
        log.info(
            "%s/%s: %d of %d members in %d shards", source, f.name, len(wanted), len(members), len(specs)
        )
    else:
        specs = [{"file": f.name, "archive": f.archive, "start": 0, "end": None, "members": []}]
    for i, spec in enumerate(specs):
        store.put_bytes(run.work_key(source, f.name, f"{prefix}{i:05d}.json"), json.dumps(spec).encode())
    return [f"{f.name}/{prefix}{i:05d}" for i in range(len(specs))]


def _carry_over(store, source: str, f: RemoteFile, items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """A new URL list (its file changed): an id whose last row is usable and whose URL still names the same object
    (same path and query; the host may have moved, as when a mirror comes up elsewhere) keeps its row and image, in a
    part of their own; the other ids are returned, to be fetched."""
    from urllib.parse import urlsplit

    import pyarrow as pa
    import pyarrow.compute as pc

    table = manifest.read_table(store, manifest.source_key(source))
    if table is None:
        return items
    last = dict(zip(*(manifest.usable(table)[c].to_pylist() for c in ("path", "origin")), strict=True))

    def same_object(old: str | None, new: str) -> bool:
        a, b = urlsplit(old or ""), urlsplit(new)
        return a.scheme in ("http", "https") and (a.path, a.query) == (b.path, b.query)

    kept = {f"{f.target}/{i}.jpg" for i, u in items if same_object(last.get(f"{f.target}/{i}.jpg"), u)}
    if kept:
        carried = table.filter(pc.is_in(table["path"], value_set=pa.array(sorted(kept))))
        manifest.write_table(store, f"{manifest.parts_prefix(source, f.name)}carried.parquet", carried)
        log.info("%s/%s: %d images kept (same URL, or moved to another host only)", source, f.name, len(kept))
    return [(i, u) for i, u in items if f"{f.target}/{i}.jpg" not in kept]


# per file: the would-be paths of skipped members kept, so a training path can say why it is absent
SKIPPED_PATHS_KEPT = 10_000
SKIPPED_EXAMPLES = 5


def skipped_key(source: str, file: str) -> str:
    return f"state/{source}/skipped/{file}.json"


def record_skipped(store, source: str, f: RemoteFile, members: list[Member]) -> dict:
    """Every member that is neither a manifest row nor extracted, counted by reason with examples: nothing is dropped
    silently. `paths`: where the member would have landed, for the ready-to-train check."""
    counts: dict[str, int] = {}
    first: dict[str, list[str]] = {}
    paths: dict[str, str] = {}
    for m in members:
        path, reason = (None, "directory") if m.kind == "dir" else f.place_member(m.name)
        shadowed = reason is None  # taken otherwise: a later member of the same path is the one extracted
        reason = reason or "shadowed by a later member of the same path"
        counts[reason] = counts.get(reason, 0) + 1
        examples = first.setdefault(reason, [])
        if len(examples) < SKIPPED_EXAMPLES:
            examples.append(m.name)
        if path and not shadowed and len(paths) < SKIPPED_PATHS_KEPT:
            paths[path] = reason
    record = {"file": f.name, "skipped": len(members), "counts": counts, "first": first, "paths": paths}
    store.put_bytes(skipped_key(source, f.name), json.dumps(record).encode())
    if members:
        log.info("%s/%s: %d member(s) not extracted: %s", source, f.name, len(members), counts)
    return record


def read_skipped(store, sources: list[str]) -> dict[str, tuple[dict[str, str], dict[str, dict]]]:
    """Per source: (would-be path -> reason, reason -> {count, first}) over its files' skip records, found with one
    listing of `state/` for every source (a few keys per source), not one listing each."""
    found: dict[str, tuple[dict[str, str], dict[str, dict]]] = {source: ({}, {}) for source in sources}
    for obj in store.list("state/"):
        _, source, kind, *_ = obj.key.split("/", 3) + ["", ""]
        if kind != "skipped" or source not in found or not obj.key.endswith(".json"):
            continue
        paths, reasons = found[source]
        record = json.loads(store.read_bytes(obj.key))
        paths.update(record.get("paths") or {})
        for reason, n in (record.get("counts") or {}).items():
            r = reasons.setdefault(reason, {"count": 0, "first": []})
            r["count"] += n
            r["first"] = (r["first"] + record["first"].get(reason, []))[:SKIPPED_EXAMPLES]
    return found


def extract(run: Run, source: str, shard_id: str) -> dict:
    store, d = run.store, run.catalog.defaults
    file_name, index = shard_id.rsplit("/", 1)
    f = run.file(source, file_name)
    spec = json.loads(store.read_bytes(run.work_key(source, file_name, f"{index}.json")))
    refused: dict[str, str] = spec.get("refused") or {}
    key = raw_key(source, f.name)
    origin = f"raw/{source}/{f.name}!"
    started = time.monotonic()
    rows: list[dict] = []
    unchanged = False  # a URL-list retry whose rows all say what the published ones say
    budget = pixel_budget(decode_budget())
    return_large_buffers()

    def row_path(member: Member, target: str | None) -> str:
        """The row's path: where the member lands, or for a member that is not taken a flat name under the
        file's target that the store accepts (never `<target>/..`, an empty part, or bytes that are not UTF-8)."""
        if target is not None and escape_name(target) == target:
            try:
                check_key(f"data/{target}")
                return target
            except StoreError:
                pass
        return f"{f.target}/{flat_name(member.name)}"

    def land(member: Member, data: bytes | None, error: str | None, *, replaces: bool = False) -> dict:
        target = f.map_member(member.name)
        path = row_path(member, target)
        if target is not None and path != target:  # a name no store key can hold: recorded, never written
            error = error or f"{escape_name(target)!r} cannot be a path in the store"
            target = None
        error = error or refused.get(member.name)
        check, written, out, stored = None, None, data, True
        if error is None and target is not None and data is not None:
            check = check_image(data, target, decoding=budget.hold)
        if check is not None and check.status in manifest.USABLE:
            try:
                store.put_bytes(f"data/{target}", check.data, durable=False)  # made durable by store.sync()
                written, out = f"data/{target}", check.data
            except UnstorableKey as e:  # this store cannot hold the name (a file and a folder of one name)
                check, error, stored = None, f"not stored: {e}", False
        else:
            error = error or (check.error if check else "member not taken")
        if written is None and stored and data is not None and target is not None:
            try:
                store.put_bytes(f"quarantine/{source}/{target}", data, durable=False)
                written = f"quarantine/{source}/{target}"
            except UnstorableKey as e:
                error = f"{error}; not quarantined: {e}"
        if replaces and target is not None:  # a later member of the same name: the earlier one's object goes
            for k in (f"data/{target}", f"quarantine/{source}/{target}"):
                if k != written:
                    store.delete(k)
        usable = check is not None and check.status in manifest.USABLE
        return {
            "path": path,
            "bytes": len(out) if out is not None else None,
            "sha256": hashlib.sha256(out).hexdigest() if out is not None else None,
            "format": check.format if check else None,
            "width": check.width if check else None,
            "height": check.height if check else None,
            "status": check.status if usable else "invalid",
            "error": check.error if usable else error,
            "origin": origin + escape_name(member.name),
            "run_id": run.run_id,
        }

    def from_zip(member: Member, raw: bytes) -> dict:
        reason = unsafe_reason(member, max_member_bytes=d.max_member_bytes)
        if reason:
            return land(member, None, reason)
        try:
            data = inflate(member, raw, max_member_bytes=d.max_member_bytes, max_ratio=d.max_ratio)
        except MemberError as e:
            return land(member, None, str(e))
        return land(member, data, None)

    def from_tar(member: Member, data: bytes | None, clash: str | None, replaces: bool) -> dict:
        reason = unsafe_reason(member, max_member_bytes=d.max_member_bytes) or clash
        return land(member, None if reason else data, reason, replaces=replaces)

    workers = extract_threads()

    def read_part(part: Shard, inflight: Inflight) -> None:
        with store.open_range(key, part.start, part.end) as stream:
            for member, raw in iter_zip_shard(
                stream, part.select(members), part.start, max_member_bytes=d.max_member_bytes
            ):
                inflight.submit(from_zip, member, raw)

    def worker(part: Shard) -> list[dict]:
        """A forked worker's share of the shard: its own byte range, its own threads."""
        threads = max(1, workers // len(parts))
        with ThreadPoolExecutor(threads, thread_name_prefix=f"extract-{source}") as own:
            inflight = Inflight(own if threads > 1 else None, 4 * threads)
            read_part(part, inflight)
            return inflight.drain()

    with ThreadPoolExecutor(workers, thread_name_prefix=f"extract-{source}") as pool:
        inflight = Inflight(pool, 4 * workers)
        submit = inflight.submit
        try:
            if spec["archive"] == "zip":
                members = [Member(**m) for m in spec["members"]]
                parts = worker_parts(members, spec["start"], spec["end"]) if store.fork_safe else []
                if parts:  # forked before this pool starts a thread, so the workers take none of them along
                    for part_rows in forked_map(worker, parts, on_lost=budget.abandon):
                        rows += part_rows
                else:
                    read_part(Shard(0, spec["start"], spec["end"], 0, len(members)), inflight)
            elif spec["archive"] in ("tar", "tar.gz"):
                # A tar can hold a name twice: the last member wins (as `tar -x` leaves it). Its work starts once
                # the earlier one's is done, and removes the earlier object, so the stored bytes are always the
                # last member's and so is the one row the part keeps.
                claims, landing = PathClaims(), {}
                tar_skipped: list[Member] = []
                with store.open_range(key) as stream:
                    compression = "gz" if spec["archive"] == "tar.gz" else ""
                    for member, data in iter_tar(
                        stream,
                        compression=compression,
                        max_member_bytes=d.max_member_bytes,
                        max_total_bytes=d.max_archive_bytes,
                    ):
                        target = f.map_member(member.name)
                        if member.kind == "dir" or not (
                            target or unsafe_reason(member, max_member_bytes=d.max_member_bytes)
                        ):
                            tar_skipped.append(member)
                            continue
                        earlier = landing.get(target) if target else None
                        clash = None
                        if target and earlier is None:
                            clash = path_problem(target) or claims.claim(target)
                        if earlier is not None:
                            earlier.result()
                        future = submit(from_tar, member, data, clash, earlier is not None)
                        if target and (earlier is not None or clash is None):
                            landing[target] = future
                record_skipped(store, source, f, tar_skipped)
            elif spec["archive"] == "urllist":  # URL-list shards fetch their images right here
                from mgdata.fetch.urllist import ingest_urls

                previous = spec.get("previous") or {}
                rows += ingest_urls(
                    store, source, f.target, [tuple(i) for i in spec["items"]], run_id=run.run_id,
                    clear_quarantine=spec["retry"], log=log.info,
                    quarantined={p: r["sha256"] for p, r in previous.items() if r["status"] == "invalid"},
                )  # fmt: skip
                if spec["retry"] and all(manifest.same_outcome(r, previous.get(r["path"])) for r in rows):
                    # every dead URL came out as it was: the published rows stand, and no part shadows them
                    log.info(
                        "%s/%s shard %s: %d URLs retried, none changed", source, f.name, index, len(rows)
                    )
                    unchanged = True
            else:  # a plain file (an annotation JSON): copy it to its target key
                with store.open_range(key) as src, store.writer(f.target) as out:
                    while chunk := src.read(4 * 1024 * 1024):
                        out.write(chunk)
        except (ArchiveError, WorkerDied) as e:
            raise SourceFailed(f"source {source!r}, file {f.name}, shard {index}: {e}") from e
        finally:
            rows += inflight.drain()

    # One row per path, the last member's (rows are in archive order): a shadowed duplicate leaves no row.
    rows = list({r["path"]: r for r in rows}.values())
    rows.sort(key=lambda r: r["path"])
    if rows and not unchanged:
        store.sync()  # every image named by the part is on disk before the part is
        manifest.write_table(
            store, f"{manifest.parts_prefix(source, f.name)}{index}.parquet", manifest.to_table(rows)
        )
    counts = {s: 0 for s in manifest.STATUSES}
    for r in rows:
        counts[r["status"]] += 1
    seconds = time.monotonic() - started
    log.info(
        "%s/%s shard %s: %d members in %.1f s (%.0f images/s): %s",
        source,
        f.name,
        index,
        len(rows),
        seconds,
        len(rows) / seconds if seconds else 0,
        counts,
    )
    return {"shard": shard_id, "members": len(rows), "seconds": round(seconds, 3)} | counts
