"""The ready-to-train check: every image a training JSON references is usable under data/, and every sample with an
image has boxes.

MG-LLaVA's training JSONs are LLaVA-style arrays of samples ``{"id", "image"?, "conversations"}`` (0.2 to 1 GB each);
its bbox JSONs are arrays of ``{"id", "boxes", "scores", "labels"}``. Both are read as streams (ijson, C backend), one
sample at a time, so memory stays bounded by what must be kept: the set of usable paths and one bbox JSON's ids.

- a sample without ``image`` is text-only and skipped; duplicate ids are allowed (LLaVA's mixes repeat them);
- an image is *present* when the layout has it and its manifest status is ok or normalized, *broken* when the layout
  has it but it is quarantined, unreadable or empty, else *missing*;
- counts are kept per path prefix (the first two components, ``coco/train2017``), each named with the catalog source
  that provides it, or as provided by none (``sam/images`` from raw ShareGPT4V data, say).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

import ijson

from mgdata.catalog import Catalog, TrainingFile

Status = Literal["present", "missing", "broken"]
Resolver = Callable[[str], Status]

LISTED = 20  # first missing / broken paths and ids without boxes listed in the report, overall
LISTED_PER_PREFIX = 5
NO_PROVIDER = "no catalog source provides this prefix"


class AnnotationError(ValueError):
    """A training or bbox JSON is not the expected array of objects; the message names the file."""


def prefix_of(path: str) -> str:
    return "/".join(path.split("/")[:2])


def iter_samples(stream: BinaryIO, *, label: str) -> Iterator[tuple[str, list[str]]]:
    """(str(id), image paths) per sample, streamed; text-only samples give an empty list."""
    try:
        for sample in ijson.items(stream, "item", use_float=True):
            if not isinstance(sample, dict):
                raise AnnotationError(
                    f"{label}: expected an array of sample objects, found {type(sample).__name__}"
                )
            image = sample.get("image")
            images = (
                [] if image in (None, "") else [image] if isinstance(image, str) else [str(i) for i in image]
            )
            yield str(sample.get("id")), [i.removeprefix("./") for i in images]
    except ijson.JSONError as e:
        raise AnnotationError(f"{label}: not valid JSON ({e})") from None


def read_box_ids(stream: BinaryIO, *, label: str) -> set[str]:
    """The ids a bbox JSON has entries for; only the ids are built, boxes are parsed past."""
    try:
        return {str(i) for i in ijson.items(stream, "item.id", use_float=True)}
    except ijson.JSONError as e:
        raise AnnotationError(f"{label}: not valid JSON ({e})") from None


@dataclass
class PrefixCounts:
    referenced: int = 0
    present: int = 0
    missing: int = 0
    broken: int = 0
    first_missing: list[str] = field(default_factory=list)

    def add(self, path: str, status: Status) -> None:
        self.referenced += 1
        if status == "present":
            self.present += 1
            return
        if status == "missing":
            self.missing += 1
        else:
            self.broken += 1
        if len(self.first_missing) < LISTED_PER_PREFIX:
            self.first_missing.append(path)


@dataclass
class Check:
    """The outcome of checking training JSONs; `as_report()` is report.json's `ready_to_train`."""

    files: list[dict] = field(default_factory=list)
    prefixes: dict[str, PrefixCounts] = field(default_factory=dict)
    samples: int = 0
    text_only: int = 0
    ids_without_boxes: int = 0
    first_missing: list[str] = field(default_factory=list)
    first_broken: list[str] = field(default_factory=list)
    first_ids_without_boxes: list[str] = field(default_factory=list)

    def check_file(
        self,
        name: str,
        samples: BinaryIO,
        resolve: Resolver,
        *,
        boxes_name: str | None = None,
        boxes: BinaryIO | None = None,
    ) -> dict:
        """Stream one training JSON (and its bbox JSON) through the check; returns the file's own counts."""
        started = time.monotonic()
        box_ids = read_box_ids(boxes, label=boxes_name or "bbox JSON") if boxes is not None else None
        own = {"json": name, "boxes": boxes_name, "status": "checked", "samples": 0, "text_only": 0}
        own |= {"referenced": 0, "present": 0, "missing": 0, "broken": 0, "ids_without_boxes": 0}
        for sample_id, images in iter_samples(samples, label=name):
            own["samples"] += 1
            if not images:
                own["text_only"] += 1
                continue
            if box_ids is not None and sample_id not in box_ids:
                own["ids_without_boxes"] += 1
                if len(self.first_ids_without_boxes) < LISTED:
                    self.first_ids_without_boxes.append(sample_id)
            for path in images:
                status = resolve(path)
                own["referenced"] += 1
                own[status] += 1
                self.prefixes.setdefault(prefix_of(path), PrefixCounts()).add(path, status)
                listed = {"missing": self.first_missing, "broken": self.first_broken}.get(status)
                if listed is not None and len(listed) < LISTED:
                    listed.append(path)
        own["box_entries"] = len(box_ids) if box_ids is not None else None
        own["seconds"] = round(time.monotonic() - started, 3)
        self.samples += own["samples"]
        self.text_only += own["text_only"]
        self.ids_without_boxes += own["ids_without_boxes"]
        self.files.append(own)
        return own

    def absent(self, name: str, boxes_name: str | None, *, optional: bool, why: str) -> None:
        self.files.append(
            {
                "json": name,
                "boxes": boxes_name,
                "status": "absent (optional)" if optional else "absent",
                "note": why,
            }
        )

    def as_report(self, catalog: Catalog | None = None) -> dict:
        kinds = ("referenced", "present", "missing", "broken")
        total = {k: sum(getattr(p, k) for p in self.prefixes.values()) for k in kinds}
        checked = any(f["status"] == "checked" for f in self.files)
        required_absent = [f["json"] for f in self.files if f["status"] == "absent"]
        ready = (
            checked
            and not required_absent
            and total["missing"] == total["broken"] == self.ids_without_boxes == 0
        )
        by_prefix = {}
        for prefix, counts in sorted(self.prefixes.items()):
            provider = catalog.provider(prefix + "/") if catalog is not None else None
            by_prefix[prefix] = {
                "source": provider,
                "note": None if provider or catalog is None else NO_PROVIDER,
                "referenced": counts.referenced,
                "present": counts.present,
                "missing": counts.missing,
                "broken": counts.broken,
                "first_missing": counts.first_missing,
            }
        return {
            "checked": checked,
            "ready": ready,
            "note": _verdict(checked, ready, required_absent, total, self.ids_without_boxes),
            **total,
            "missing_by_prefix": {p: c.missing for p, c in sorted(self.prefixes.items()) if c.missing},
            "ids_without_boxes": self.ids_without_boxes,
            "samples": self.samples,
            "text_only": self.text_only,
            "by_prefix": by_prefix,
            "unprovided_prefixes": sorted(p for p, b in by_prefix.items() if b["note"] == NO_PROVIDER),
            "first_missing": self.first_missing,
            "first_broken": self.first_broken,
            "first_ids_without_boxes": self.first_ids_without_boxes,
            "files": self.files,
        }


def _verdict(checked: bool, ready: bool, absent: list[str], total: dict, no_boxes: int) -> str:
    if ready:
        return f"ready to train: all {total['referenced']:,} referenced images are usable and every sample has boxes"
    if not checked:
        return "not checked: no training JSON is in the store yet" + (
            f" ({', '.join(absent)})" if absent else ""
        )
    problems = [
        f"{n:,} {what}" for n, what in ((total["missing"], "images missing"), (total["broken"], "broken"))
    ]
    problems += [f"{no_boxes:,} image samples without boxes"] + [f"{a} absent" for a in absent]
    return "not ready: " + ", ".join(p for p in problems if not p.startswith("0 "))


# ------------------------------------------------------------------------------------------------ resolvers


def store_resolver(store, sources: list[str], *, layout_dir: str | os.PathLike | None = None) -> Resolver:
    """Status of a data/-relative path from the sources' latest manifests (and the local tree when there is one)."""
    import pyarrow.compute as pc

    from mgdata import manifest

    usable: set[str] = set()
    quarantined: set[str] = set()
    for source in sources:
        table = manifest.read_table(store, manifest.source_key(source), columns=["path", "status"])
        if table is None:
            continue
        usable.update(manifest.usable(table)["path"].to_pylist())
        # `missing` rows (dead URLs) have no file at all: missing, not broken
        quarantined.update(table.filter(pc.equal(table["status"], "invalid"))["path"].to_pylist())
    root = Path(layout_dir) if layout_dir else None

    def resolve(path: str) -> Status:
        if path in usable:
            return "present" if root is None or (root / path).is_file() else "missing"
        return "broken" if path in quarantined else "missing"

    return resolve


def folder_resolver(data_dir: str | os.PathLike, *, decode: bool = False) -> Resolver:
    """Status of a path in a local data/ folder: present if a non-empty file (that decodes fully, with `decode`)."""
    root = Path(data_dir)

    def resolve(path: str) -> Status:
        try:
            size = (root / path).stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            return "missing"
        if size == 0:
            return "broken"
        if decode:
            from mgdata.images import check_image

            return (
                "broken" if check_image((root / path).read_bytes(), path).status == "invalid" else "present"
            )
        return "present"

    return resolve


# ------------------------------------------------------------------------------------------------ the run's check


def check_store(store, catalog: Catalog, *, layout_dir: str | os.PathLike | None = None) -> dict:
    """Check every training JSON the catalog declares against the store's manifests (report.json `ready_to_train`)."""
    resolve = store_resolver(store, list(catalog.sources), layout_dir=layout_dir)
    check = Check()
    for t in catalog.training:
        _check_declared(store, check, t, resolve)
    return check.as_report(catalog)


def _check_declared(store, check: Check, t: TrainingFile, resolve: Resolver) -> None:
    if store.stat(t.json_key) is None:
        check.absent(t.json_key, t.boxes, optional=t.optional, why="not in the store")
        return
    if t.boxes is not None and store.stat(t.boxes) is None:
        check.absent(
            t.json_key, t.boxes, optional=t.optional, why=f"its bbox JSON {t.boxes} is not in the store"
        )
        return
    with store.open_range(t.json_key) as samples:
        if t.boxes is None:
            check.check_file(t.json_key, samples, resolve)
            return
        with store.open_range(t.boxes) as boxes:
            check.check_file(t.json_key, samples, resolve, boxes_name=t.boxes, boxes=boxes)
