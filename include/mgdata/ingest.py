"""The per-source stages a run goes through: plan → fetch (per file) → shard → extract (per shard) → finalize.

Each stage is one plain function that a thin Airflow task calls with plain arguments; it reads what it needs from the
catalog and the store and returns a small dict (file names, shard ids, counts). Everything larger lives in the store:

    state/<source>.json                   the source after its last successful ingest (files, counts, the run that made it)
    state/<source>/files/<file>.json      per remote file: what was fetched (etag, size, digests) and extracted
    runs/<run_id>/sources/<source>/...    this run's plan (when it has work), fetch records, failures, the summary
    work/<run_id>/<source>/<file>/<n>.json  the members of one extract shard
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import groupby

from mgdata import manifest
from mgdata.catalog import RemoteFile
from mgdata.run import (
    Run,
    SourceFailed,
    file_state_key,
    finalize_journal_key,
    finalize_old_key,
    no_ingest_summary,
    now,
    put_json,
    raw_key,
    read_json,
    source_state_key,
)
from mgdata.storage import Store, StoreError, check_key

log = logging.getLogger("mgdata.ingest")


def _fingerprint(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fetch_fingerprint(f: RemoteFile, *, endpoints: bool = False) -> str:
    """Changes when what we fetch changes: mirrors, size or checksums. A Hub mirror's `endpoint` says where the Hub
    is served from (a proxy, a stand-in), not what is fetched: it is left out (`endpoints=True`: the fingerprint
    stores written before that recorded)."""
    mirrors = [m.model_dump(exclude=None if endpoints else {"endpoint"}) for m in f.mirrors]
    return _fingerprint(mirrors + [f.size, f.checksums])


def _pinned_and_held(f: RemoteFile, fetched: dict) -> bool:
    """The catalog pins the file's bytes (size, checksums) and the stored copy is those bytes: mirrors added,
    dropped, reordered or moved change nothing about it."""
    held = {**(fetched.get("digests") or {}), "sha256": fetched.get("sha256")}
    return (
        bool(f.checksums)
        and f.size in (None, fetched.get("size"))
        and all(held.get(algo) == digest for algo, digest in f.checksums.items())
    )


def extract_fingerprint(f: RemoteFile) -> str:
    """Changes when where members land changes: the mapping rules."""
    return _fingerprint([f.archive, f.target, f.member_prefix, f.strip_components, f.flatten, f.include])


# ----------------------------------------------------------------------------------------------------------- plan


def plan_source(run: Run, source: str) -> list[dict]:
    """Decide, per remote file, whether to fetch and whether to extract; return the files to fetch.

    A file is fetched again only when it is new, its catalog entry changed (the pin or the size, not the mirrors), its
    stored copy is missing, `force` is set, or (for files without a pinned checksum) the server's ETag, else
    Last-Modified and size, moved, asked where the catalog now points. Nothing changed means nothing fetched.
    """
    src = run.source(source)
    store = run.store
    decisions, states = [], {}
    listed = any(f.listed for f in src.files)
    if listed:  # kept here until the plan is known: only a source that runs on reads it in its other tasks
        run.put_record(source, "listing.json", _list_files(run, source), persist=False)
    for f in run.files(source):
        states[f.name] = read_json(store, file_state_key(source, f.name))
        rec = states[f.name] or {}
        if src.kind == "urllist" and not _chosen(run, f):
            decisions.append(_not_chosen(run, source, f))
            continue
        if src.kind == "manual":
            fetch, reason = _needs_fetch_provided(run, source, f, rec)
        else:
            fetch, reason = _needs_fetch(run, source, f, rec)
        extract = fetch or _needs_extract(run, f, rec)
        decision = {"file": f.name, "fetch": fetch, "extract": extract, "reason": reason}
        if src.kind == "urllist" and not extract:
            decision |= _path_refresh(run, source, f)
            reason = decision["reason"]
        decisions.append(decision)
        log.info(
            "%s/%s: %s%s", source, f.name, "fetch" if fetch else "keep", f" ({reason})" if reason else ""
        )
    plan = {"source": source, "started": now(), "files": decisions}
    if any(d["fetch"] or d["extract"] for d in decisions) or store.stat(manifest.source_key(source)) is None:
        run.put_record(source, "plan.json", plan)  # read by the source's shard and finalize tasks
        if listed:
            run.put_record(source, "listing.json", run.record(source, "listing.json"))
    else:  # unchanged: this task finalizes the source from its state and hands on the summary (which holds the
        # plan); nothing else of the source runs
        run.put_record(source, "plan.json", plan | {"unchanged": True, "file_states": states}, persist=False)
    return [{"file": d["file"]} for d in decisions if d["fetch"]]


def _chosen(run: Run, f: RemoteFile) -> bool:
    """URL-list sources have two paths to the same images: the URL list itself, or a mirror's archive of them."""
    return (f.archive == "urllist") == (run.settings.ocr_vqa_images == "urls")


def _not_chosen(run: Run, source: str, f: RemoteFile) -> dict:
    # Its rows leave the manifest: the chosen path's files alone make the images (finalize merges again).
    dropped = run.store.delete_prefix(manifest.parts_prefix(source, f.name))
    path = "urls" if f.archive == "urllist" else "mirror"
    reason = f"not used: ocr_vqa_images={run.settings.ocr_vqa_images!r} (this file is the {path!r} path)"
    log.info("%s/%s: %s%s", source, f.name, reason, f"; {dropped} manifest parts dropped" if dropped else "")
    return {"file": f.name, "fetch": False, "extract": False, "reason": reason, "chosen": False}


def _path_refresh(run: Run, source: str, f: RemoteFile) -> dict:
    """An unchanged file of a URL-list source: extracted again when its rows are gone (the other path was used in
    between); for the URL list itself, only the ids whose last row is missing or invalid are fetched again (dead URLs
    may come back)."""
    if not any(True for _ in run.store.list(manifest.parts_prefix(source, f.name))):
        return {
            "extract": True,
            "reason": "unchanged, but its rows were dropped when the other path was used",
        }
    if f.archive != "urllist":
        return {}
    table = manifest.read_table(run.store, manifest.source_key(source))
    dead = 0 if table is None else table.num_rows - sum(manifest.counts(table)[s] for s in manifest.USABLE)
    if not dead:
        return {}
    return {"extract": True, "retry_dead": True, "reason": f"unchanged; retrying {dead} dead or broken URLs"}


def _needs_fetch_provided(run: Run, source: str, f: RemoteFile, rec: dict) -> tuple[bool, str]:
    """Registration-only: SourceSkipped (with the instructions) until the user provides the file; then fetched
    again only when what they provided changed (a new inbox upload, another URL)."""
    from mgdata.manual import find_provided

    provided = find_provided(run.store, source, run.source(source), f)
    fetched = rec.get("fetch")
    if why := _copy_needed(run, source, f, fetched):
        return True, f"{why} ({provided.where})"
    if (fetched.get("mirror"), fetched.get("etag")) != (provided.where, provided.etag or fetched.get("etag")):
        return True, f"provided copy changed ({provided.where})"
    return False, f"unchanged ({provided.where})"


def listing_state_key(source: str, entry: str) -> str:
    return f"state/{source}/listings/{entry}.json"


def _list_files(run: Run, source: str) -> dict[str, list[dict]]:
    """Expand every listed entry of the source through its repo's file listing (first mirror that answers).

    An unreachable listing during a refresh falls back to the last successful one, like an unreachable upstream keeps
    a verified copy; with no earlier listing the source fails, naming the entry."""
    from mgdata.fetch import FetchError
    from mgdata.fetch.huggingface import list_files
    from mgdata.settings import hf_token

    src, found, names = run.source(source), {}, [f.name for f in run.source(source).files if not f.listed]
    for f in src.files:
        if not f.listed:
            continue
        failures = []
        for m in (m for m in f.mirrors if m.path_glob):
            try:
                commit, hub_files = list_files(m, token=hf_token())
            except FetchError as e:
                failures.append(str(e))
                continue
            if not hub_files:
                failures.append(f"{m.describe()}: no file matches at commit {commit}")
                continue
            try:
                files = [f.listed_file(m, h.path).model_dump() for h in hub_files]
            except ValueError as e:
                raise SourceFailed(f"source {source!r}, file entry {f.name!r}: {e}") from None
            listing = {"commit": commit, "mirror": m.describe(), "files": files}
            last = read_json(run.store, listing_state_key(source, f.name)) or {}
            if {k: last.get(k) for k in listing} != listing:  # the same listing is not written again
                listing["run_id"] = run.run_id
                put_json(run.store, listing_state_key(source, f.name), listing)
            log.info("%s/%s: %d files listed at commit %s", source, f.name, len(files), commit)
            break
        else:
            listing = read_json(run.store, listing_state_key(source, f.name))
            if listing is None:
                raise SourceFailed(
                    f"source {source!r}, file entry {f.name!r}: listing failed: {'; '.join(failures)}"
                )
            log.warning(
                "%s/%s: listing failed, keeping the last one (%s)", source, f.name, "; ".join(failures)
            )
        found[f.name] = listing["files"]
        names += [d["name"] for d in listing["files"]]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise SourceFailed(f"source {source!r}: listed files clash with other files of the source: {clashes}")
    return found


def _copy_needed(run: Run, source: str, f: RemoteFile, fetched: dict | None) -> str | None:
    """Why the file must be fetched whatever its upstream says (forced, never fetched, stored copy gone), or None."""
    if run.force:
        return "forced"
    if not fetched:
        return "new"
    raw = run.store.stat(raw_key(source, f.name))
    if raw is None or raw.size != fetched.get("size"):
        return "stored copy missing or incomplete"
    return None


def _needs_fetch(run: Run, source: str, f: RemoteFile, rec: dict) -> tuple[bool, str]:
    fetched = rec.get("fetch")
    if why := _copy_needed(run, source, f, fetched):
        return True, why
    same_entry = fetched.get("fingerprint") in (fetch_fingerprint(f), fetch_fingerprint(f, endpoints=True))
    if not same_entry and not _pinned_and_held(f, fetched):
        if f.checksums or f.size not in (None, fetched.get("size")):
            return True, "catalog entry changed"
        # Nothing pins the bytes and only where they come from changed (mirrors added, dropped, moved): the upstream's
        # own metadata at the new place (ETag, else Last-Modified and size) says whether they are the same bytes.
        fetch, reason = _remote_moved(f, fetched)
        return fetch, f"mirrors changed; {reason}"
    if "sha256" in f.checksums or "md5" in f.checksums or "sha1" in f.checksums:
        return False, "unchanged (pinned checksum verified)"
    return _remote_moved(f, fetched)


def _remote_moved(f: RemoteFile, fetched: dict) -> tuple[bool, str]:
    from mgdata.fetch import FetchError, probe_mirror

    # The mirror it came from; when the catalog no longer names it, the first of the catalog's mirrors that answers.
    candidates = [m for m in f.mirrors if m.describe() == fetched.get("mirror")] or list(f.mirrors)
    errors = []
    for mirror in candidates:
        try:
            info = probe_mirror(mirror)
            break
        except FetchError as e:
            errors.append(str(e))
    else:
        # A scheduled refresh must not destroy a verified copy because the upstream is down for a day.
        return False, f"kept: upstream unreachable ({'; '.join(errors)})"
    if info.etag and fetched.get("etag"):
        moved = info.etag != fetched["etag"]
    else:
        moved = (info.last_modified, info.size) != (fetched.get("last_modified"), fetched.get("size"))
    # A Hub mirror's URL names the commit its revision resolved to: the plan records it.
    at = f" at {info.url}" if mirror.kind == "huggingface" else ""
    return (True, f"upstream changed{at}") if moved else (False, f"unchanged (ETag/Last-Modified/size){at}")


def _needs_extract(run: Run, f: RemoteFile, rec: dict) -> bool:
    done = rec.get("extract")
    return (
        run.force
        or not done
        or done.get("sha256") != (rec.get("fetch") or {}).get("sha256")
        or done.get("fingerprint") != extract_fingerprint(f)
    )


# ----------------------------------------------------------------------------------------------------------- fetch


def fetch_file(run: Run, source: str, file: str) -> dict:
    """Stream one remote file into `raw/<source>/<file>`, verified, trying mirrors in catalog order."""
    from mgdata.fetch import fetch_mirrors

    f = run.file(source, file)
    label = f"{source}/{file}"
    # This task owns the key: an upload still open under it was left by a killed attempt (S3 would keep its parts).
    if aborted := run.store.abort_uploads(raw_key(source, file)):
        log.info("%s: aborted %d unfinished upload(s) left by an earlier attempt", label, aborted)
    if run.source(source).kind == "manual":
        from mgdata.manual import fetch_provided, find_provided

        provided = find_provided(run.store, source, run.source(source), f)
        where = provided.where
        result = fetch_provided(
            run.store, provided, raw_key(source, file), label=label, size=f.size, checksums=dict(f.checksums)
        )
    else:
        result, mirror = fetch_mirrors(
            f.mirrors, run.store, raw_key(source, file), label=label, size=f.size, checksums=dict(f.checksums)
        )
        where = mirror.describe()
    record = {
        "mirror": where,
        "url": result.url,
        "size": result.size,
        "sha256": result.sha256,
        "digests": result.digests,
        "etag": result.etag,
        "last_modified": result.last_modified,
        "fingerprint": fetch_fingerprint(f),
        "run_id": run.run_id,
        "seconds": round(result.seconds, 3),
        "resumes": result.resumes,
    }
    rec = read_json(run.store, file_state_key(source, file)) or {}
    rec["fetch"] = record
    put_json(run.store, file_state_key(source, file), rec)
    put_json(run.store, run.key(source, "fetched", f"{file}.json"), record)
    return {"file": file, "bytes": result.size, "seconds": round(result.seconds, 3)}


# ----------------------------------------------------------------------------------------------------------- shard


def plan_shards(run: Run, source: str) -> list[str]:
    """Cut every file this run extracts into shards; return shard ids `<file>/<n>` (one mapped extract each)."""
    from mgdata.extract import shard_file

    plan = run.record(source, "plan.json")
    if plan is None:
        raise SourceFailed(f"source {source!r}: no plan for run {run.run_id} (did the plan task run?)")
    ids: list[str] = []
    for d in plan["files"]:
        if d["extract"]:
            ids += shard_file(run, source, run.file(source, d["file"]), retry_dead=d.get("retry_dead", False))
    return ids


def extract_shard(run: Run, source: str, shard_id: str) -> dict:
    from mgdata.extract import extract

    return extract(run, source, shard_id)


def unchanged(run: Run, source: str) -> bool:
    """The plan this task just made fetches and extracts nothing and the source has a manifest from an earlier
    ingest: finalize alone (no merge: the manifest stays as it is) records the source's summary, and the DAG skips
    the rest."""
    return bool((run.record(source, "plan.json") or {}).get("unchanged"))


def ingest_source(run: Run, source: str) -> dict:
    """One source's task group in this process, stage after stage (plan, fetch, shard, extract, finalize): what
    tests, benchmarks and library users run without Airflow. Returns finalize's summary."""
    for planned in plan_source(run, source):
        fetch_file(run, source, planned["file"])
    extract_shards(run, source, plan_shards(run, source))
    return finalize_source(run, source)


SHARDS_AT_ONCE = 2


def extract_shards(run: Run, source: str, shard_ids: list[str]) -> list[dict]:
    """Extract shards in this process, in shard order, two at a time within each file: the next shard starts while
    the last one drains (its final decodes, the flush, its manifest part), which one after another left a core idle
    at every shard boundary. Both share the process's decode budget (`extract.pixel_budget`). Files go one after
    another, so when two files of a source name the same path the later file's bytes are the ones stored, as its
    manifest row says. On the first failure the shards not yet begun are dropped and the error is raised once the
    running one ends."""
    results: list[dict] = []
    for _, same_file in groupby(shard_ids, key=lambda shard_id: shard_id.rsplit("/", 1)[0]):
        with ThreadPoolExecutor(SHARDS_AT_ONCE, thread_name_prefix=f"shards-{source}") as pool:
            futures = [pool.submit(extract_shard, run, source, shard_id) for shard_id in same_file]
            try:
                results += [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    return results


# ----------------------------------------------------------------------------------------------------------- finalize


def finalize_source(run: Run, source: str, persist: bool = True) -> dict:
    """Merge the shard manifests, diff against the last ingest, remove what left it, record state and this run's
    source summary (`runs/<run_id>/sources/<source>/summary.json`; with `persist=False` kept in this process as
    `run.record(source, "summary.json")`, for a caller that hands it on itself).

    A write-ahead transaction, safe to retry after a kill at any point: before the new manifest is published, the
    manifest it replaces is saved (`work/journal/<source>/old.parquet`) and a journal names it
    (`finalize.json`, `done: false`). A retry that finds the journal unfinished, or finished by this same run,
    diffs against that saved manifest (not against the one the cut-off attempt may already have published) and
    removes the stale objects of both, so the diff in the summary is the same and no object is left without a
    row. The journal is marked done last; the saved manifest stays until the next run's finalize replaces it."""
    store, src = run.store, run.source(source)
    plan = run.record(source, "plan.json") or {"files": []}
    extracted = [d["file"] for d in plan["files"] if d["extract"]]
    files = run.files(source)
    journal = read_json(store, finalize_journal_key(source))
    redo = journal is not None and (not journal["done"] or journal["run_id"] == run.run_id)
    # the run that made the published manifest (None on the first): what the diff is since
    recorded = read_json(store, source_state_key(source)) or {}
    previous = journal.get("since") if redo else recorded.get("run_id")
    by_file: dict = {}
    if plan.get("unchanged") and not redo and recorded.get("counts") is not None:
        # Nothing to merge (this task's plan found the source unchanged) and the last finalize completed: the
        # manifest stays as it is, and its counts are the state's, which that finalize wrote after publishing it.
        counts, change, made_here = recorded["counts"], manifest.Diff.none(), False
    else:
        counts, change, made_here, by_file, journal = _publish(
            run, source, extracted, journal, redo, previous
        )

    read = plan.get("file_states") or {}  # the file states this task's plan read; the others are read here
    records = {
        f.name: read[f.name] if f.name in read else read_json(store, file_state_key(source, f.name))
        for f in files
    }
    retried = {d["file"] for d in plan["files"] if d.get("retry_dead")}
    for name in extracted:
        if name in retried and not made_here:
            continue  # a retry that changed no row: the file's record stays as its last extract left it
        rec = records[name] = records[name] or {}
        rec["extract"] = {
            "sha256": (rec.get("fetch") or {}).get("sha256"),
            "fingerprint": extract_fingerprint(run.file(source, name)),
            "run_id": run.run_id,
            # what this file produced (OCR-VQA: how many images each path gave), kept when another path is used
            "counts": manifest.counts(by_file[name]),
        }
        put_json(store, file_state_key(source, name), rec)

    # A fetch writes the file state (naming its run) before this run's fetch record: a source whose file states name
    # another run fetched nothing in this one, and its records need no listing.
    fetched_here = any(((r or {}).get("fetch") or {}).get("run_id") == run.run_id for r in records.values())
    fetched = (
        [read_json(store, o.key) for o in store.list(run.key(source, "fetched") + "/")]
        if fetched_here
        else []
    )
    usable = counts["ok"] + counts["normalized"]
    summary = {
        "source": source,
        "title": src.title,
        "kind": src.kind,
        "status": "ok",
        "files_fetched": len(fetched),
        "bytes_fetched": sum(r["size"] for r in fetched),
        "fetch_seconds": round(sum(r["seconds"] for r in fetched), 3),
        "files_extracted": len(extracted),
        "images_ok": counts["ok"],
        "images_invalid": counts["invalid"],
        "images_normalized": counts["normalized"],
        "images_missing": counts["missing"],
        "expected_images": src.expected_images,
        "count_check": _count_check(usable, src.expected_images),
        "diff": change.as_dict(),
        "diff_paths": change.examples,
        "diff_since": previous,
        "plan": plan["files"],
        "by_file": _by_file(files, records, plan["files"]),
        "started": plan.get("started"),
        "finished": now(),
        "error": None,
        "run_id": run.run_id,
    }
    run.put_record(source, "summary.json", summary, persist=persist)
    state = {"source": source, "counts": counts, "files": records}
    # The state names the run that made the manifest as it is: a refresh that changed nothing (or a retry or a
    # cleared task of the same run) leaves it exactly as it was, so an unchanged refresh writes no state.
    if {k: recorded.get(k) for k in state} != state or made_here and recorded.get("run_id") != run.run_id:
        put_json(
            store, source_state_key(source), state | {"run_id": run.run_id, "updated": summary["finished"]}
        )
    if journal is not None and not journal["done"]:  # the transaction is complete
        put_json(
            store, finalize_journal_key(source), journal | {"done": True, "finished": summary["finished"]}
        )
    return {
        k: summary[k]
        for k in (
            "status",
            "files_fetched",
            "bytes_fetched",
            "images_ok",
            "images_invalid",
            "images_normalized",
            "expected_images",
        )
    } | change.as_dict()


def _publish(
    run: Run, source: str, extracted: list[str], journal: dict | None, redo: bool, previous: str | None
) -> tuple[dict, manifest.Diff, bool, dict, dict | None]:
    """Merge the shard manifests where this run extracted, publish the source's manifest under the journal and
    remove what left it: (counts, diff, whether this run changed the manifest or its objects, merged rows by file,
    the journal)."""
    store, files = run.store, run.files(source)
    published = manifest.read_table(store, manifest.source_key(source))
    if redo:  # an earlier attempt got as far as the journal: do it again from the manifest it saved
        old = manifest.read_table(store, finalize_old_key(source)) if journal["old"] else None
        if not journal["done"]:
            log.warning("%s: finishing the finalize of run %s that was cut off", source, journal["run_id"])
    else:
        old = published
    by_file: dict = {}
    if extracted or published is None or redo:
        # One merged table per file (its parts read once), then the source's: the later file wins a path either way.
        by_file = {
            f.name: manifest.merge(
                [manifest.read_table(store, o.key) for o in store.list(manifest.parts_prefix(source, f.name))]
            )
            for f in files
        }
        new = manifest.merge(list(by_file.values()))
        if not redo and published is not None and new.equals(published):
            new = published  # the parts say what is published (a retry of dead URLs that all stayed dead)
    else:
        new = published
    change = manifest.diff(old, new)
    stale = set(manifest.stale_objects(source, old, new))
    if redo and published is not None:  # what the cut-off attempt published may name more
        stale |= set(manifest.stale_objects(source, published, new))
    if not redo and (stale or new is not published):
        if old is not None:
            manifest.write_table(store, finalize_old_key(source), old)
        journal = {
            "source": source,
            "run_id": run.run_id,
            "old": old is not None,
            "since": previous,
            "done": False,
        }
        put_json(store, finalize_journal_key(source), journal)
    if new is not published:
        manifest.write_table(store, manifest.source_key(source), new)
    _remove_stale(store, sorted(stale))
    return manifest.counts(new), change, new is not published or bool(stale), by_file, journal


def _by_file(files: list[RemoteFile], records: dict[str, dict | None], decisions: list[dict]) -> dict:
    """Per file: whether this run used it, and the rows its last extract produced (by status)."""
    unused = {d["file"] for d in decisions if d.get("chosen") is False}
    out = {}
    for f in files:
        done = (records[f.name] or {}).get("extract") or {}
        out[f.name] = {
            "used": f.name not in unused,
            "run_id": done.get("run_id"),
            **(done.get("counts") or {}),
        }
    return out


def _count_check(usable: int, expected: int | None) -> str:
    if expected is None:
        return "no expectation in the catalog"
    if usable == expected:
        return f"as expected ({expected})"
    return f"{usable} usable images, catalog expects {expected} ({usable - expected:+d})"


def _remove_stale(store: Store, keys: list[str]) -> None:
    """Objects of paths that left the manifest or changed status (a file upstream shrank, an image went bad) are
    removed. Deleting is idempotent, so a retry repeats it; a key the store refuses never held an object."""
    for key in keys:
        try:
            check_key(key)
        except StoreError:
            continue
        store.delete(key)


# ----------------------------------------------------------------------------------------------------------- outcome records


def record_skipped(run: Run, source: str, reason: str) -> None:
    put_json(run.store, run.key(source, "summary.json"), no_ingest_summary(run, source, "skipped", reason))


def record_failure(run: Run, source: str, task: str, error: BaseException) -> None:
    """Keep a failed attempt's reason in the store so the report can say why a source failed."""
    message = str(error) if isinstance(error, SourceFailed | ValueError | RuntimeError | OSError) else ""
    message = message or f"{type(error).__name__}: {error}"
    stamp = f"{time.time_ns()}"
    put_json(
        run.store,
        run.key(source, "errors", f"{task}.{stamp}.json"),
        {
            "source": source,
            "task": task,
            "error": message,
            "at": now(),
        },
    )
