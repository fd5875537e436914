"""Extract and validate in one pass, one shard at a time.

`shard_file` reads an archive's directory (zip central directory; a tar is one shard since it can only be streamed)
and writes each shard's member list to `work/`. `extract` streams one shard's byte range from the store, and for every
member, in a thread pool (zlib, hashlib and Pillow's decoders release the GIL, so threads use every core): inflate and
check it, hash it, fully decode it, write it under `data/<layout path>` (or `quarantine/<source>/` with the reason),
and produce its manifest row. The rows go to one small Parquet part per shard, written after one flush of the store
(`Store.sync`) rather than an fsync per image: the part is the shard's commit record.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict

from mgdata import manifest
from mgdata.archive import (
    ArchiveError,
    Member,
    MemberError,
    inflate,
    iter_tar,
    iter_zip_shard,
    plan_zip_shards,
    read_zip_directory,
    unsafe_reason,
)
from mgdata.catalog import RemoteFile
from mgdata.images import check_image
from mgdata.ingest import Run, SourceFailed, raw_key
from mgdata.settings import env_int

log = logging.getLogger("mgdata.extract")


def extract_threads() -> int:
    """Threads per extract task: `MGDATA_EXTRACT_THREADS`, else twice the cores (store I/O overlaps decoding).

    Under an executor that runs one extract task per core at once (LocalExecutor, a Celery worker with
    concurrency = cores), 2 is enough: the task processes already use every core."""
    return env_int("MGDATA_EXTRACT_THREADS", max(2, (os.cpu_count() or 2) * 2))


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
        if retry_dead:
            table = manifest.read_table(store, manifest.source_key(source))
            rows = (
                zip(table["path"].to_pylist(), table["status"].to_pylist(), strict=True)
                if table is not None
                else []
            )
            dead = {path for path, status in rows if status not in manifest.USABLE}
            items = [(i, u) for i, u in items if f"{f.target}/{i}.jpg" in dead]
        chunks = url_shards(items, max_shards=d.max_shards)
        specs = [{"file": f.name, "archive": "urllist", "retry": retry_dead, "items": c} for c in chunks]
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


def read_skipped(store, source: str) -> tuple[dict[str, str], dict[str, dict]]:
    """(would-be path -> reason, reason -> {count, first}) over the source's files' skip records."""
    paths: dict[str, str] = {}
    reasons: dict[str, dict] = {}
    for obj in store.list(f"state/{source}/skipped/"):
        record = json.loads(store.read_bytes(obj.key))
        paths.update(record.get("paths") or {})
        for reason, n in (record.get("counts") or {}).items():
            r = reasons.setdefault(reason, {"count": 0, "first": []})
            r["count"] += n
            r["first"] = (r["first"] + record["first"].get(reason, []))[:SKIPPED_EXAMPLES]
    return paths, reasons


def extract(run: Run, source: str, shard_id: str) -> dict:
    store, d = run.store, run.catalog.defaults
    file_name, index = shard_id.rsplit("/", 1)
    f = run.file(source, file_name)
    spec = json.loads(store.read_bytes(run.work_key(source, file_name, f"{index}.json")))
    key = raw_key(source, f.name)
    origin = f"raw/{source}/{f.name}!"
    started = time.monotonic()
    rows: list[dict] = []

    def land(member: Member, data: bytes | None, error: str | None) -> dict:
        target = f.map_member(member.name)
        path = target or f"{f.target}/{member.name.replace('/', '_')}"
        if error is None and target is not None and data is not None:
            check = check_image(data, target)
        else:
            check = None
        if check is not None and check.status in manifest.USABLE:
            store.put_bytes(f"data/{target}", check.data, durable=False)  # made durable by store.sync() below
            out = check.data
        else:
            error = error or (check.error if check else "member not taken")
            out = data
            if data is not None and target is not None:
                store.put_bytes(f"quarantine/{source}/{target}", data, durable=False)
        return {
            "path": path,
            "bytes": len(out) if out is not None else None,
            "sha256": hashlib.sha256(out).hexdigest() if out is not None else None,
            "format": check.format if check else None,
            "width": check.width if check else None,
            "height": check.height if check else None,
            "status": check.status if check and check.status in manifest.USABLE else "invalid",
            "error": check.error if check and check.status in manifest.USABLE else error,
            "origin": origin + member.name,
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

    def from_tar(member: Member, data: bytes | None) -> dict:
        reason = unsafe_reason(member, max_member_bytes=d.max_member_bytes)
        return land(member, None if reason else data, reason)

    pending: deque[Future] = deque()
    workers = extract_threads()
    with ThreadPoolExecutor(workers, thread_name_prefix=f"extract-{source}") as pool:

        def submit(fn, *args) -> None:
            pending.append(pool.submit(fn, *args))
            while len(pending) > 4 * workers:  # bounded memory: at most this many members in flight
                rows.append(pending.popleft().result())

        try:
            if spec["archive"] == "zip":
                members = [Member(**m) for m in spec["members"]]
                with store.open_range(key, spec["start"], spec["end"]) as stream:
                    for member, raw in iter_zip_shard(
                        stream, members, spec["start"], max_member_bytes=d.max_member_bytes
                    ):
                        submit(from_zip, member, raw)
            elif spec["archive"] in ("tar", "tar.gz"):
                tar_skipped: list[Member] = []
                with store.open_range(key) as stream:
                    compression = "gz" if spec["archive"] == "tar.gz" else ""
                    for member, data in iter_tar(
                        stream,
                        compression=compression,
                        max_member_bytes=d.max_member_bytes,
                        max_total_bytes=d.max_archive_bytes,
                    ):
                        if member.kind == "dir" or not (
                            f.map_member(member.name)
                            or unsafe_reason(member, max_member_bytes=d.max_member_bytes)
                        ):
                            tar_skipped.append(member)
                            continue
                        submit(from_tar, member, data)
                record_skipped(store, source, f, tar_skipped)
            elif spec["archive"] == "urllist":  # URL-list shards fetch their images right here
                from mgdata.fetch.urllist import ingest_urls

                rows += ingest_urls(
                    store, source, f.target, [tuple(i) for i in spec["items"]], run_id=run.run_id,
                    clear_quarantine=spec["retry"], log=log.info,
                )  # fmt: skip
            else:  # a plain file (an annotation JSON): copy it to its target key
                with store.open_range(key) as src, store.writer(f.target) as out:
                    while chunk := src.read(4 * 1024 * 1024):
                        out.write(chunk)
        except ArchiveError as e:
            raise SourceFailed(f"source {source!r}, file {f.name}, shard {index}: {e}") from e
        finally:
            while pending:
                rows.append(pending.popleft().result())

    rows.sort(key=lambda r: r["path"])
    if rows:
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
