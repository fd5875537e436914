"""The ready-to-train check: a trainer's own reading contract applied to its training JSONs (docs/ready-to-train.md).

A contract (`mgdata.contracts`: MG-LLaVA's, LLaVA's) says how one trainer reads a sample and what makes it crash or
silently train on less; each such way is a *rule*. This engine streams the JSONs through the contract, resolves every
image the trainer would open (in the store's manifests, or a local folder opened as the trainer opens it), checks the
bbox JSON where the contract needs one, and counts every rule per file with its first offending ids or paths: `ready`
means no rule fired. Samples the trainer drops before reading any image are counted, and neither their image nor their
boxes are required.

Both JSONs are streamed (`jsonstream`: read as `json.load` reads them, one sample or entry at a time, by the standard
library's C scanner): memory is bounded by what must be kept (the
usable paths from the manifests, one bbox JSON's keys).
"""

from __future__ import annotations

import itertools
import os
import posixpath
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from stat import S_ISREG
from typing import BinaryIO, Literal

from mgdata import pitfalls
from mgdata.catalog import Catalog
from mgdata.contracts import CONTRACTS, MGLLAVA, Contract, Rules
from mgdata.jsonstream import StreamError, array_items, object_items

Status = Literal["present", "missing", "broken", "skipped"]
Resolver = Callable[[str], Status]  # the JSON's `image` string as written -> its status under data/

LISTED = 20  # first offending paths / ids listed per rule, overall
LISTED_PER_PREFIX = 5
NO_PROVIDER = "no catalog source provides this prefix"
OUTSIDE = "(outside data/)"


class AnnotationError(ValueError):
    """A training or bbox JSON cannot be read at all (not JSON, not an array); the message names the file."""


def _plain(image: str) -> bool:
    """A relative path that `posixpath.normpath` leaves as it is (no empty, `.` or `..` part, no trailing slash): what
    nearly every training JSON holds, told apart by a few string scans instead of a normpath per image."""
    return (
        bool(image) and image[0] not in "/." and image[-1] != "/" and "//" not in image and "/." not in image
    )


def data_relative(image: str) -> str | None:
    """Where `os.path.join(data, image)` lands, relative to data/, or None outside it (absolute, or `..` above it)."""
    if _plain(image):
        return image
    if image.startswith("/"):
        return None  # os.path.join drops data/ for an absolute second argument
    path = posixpath.normpath(image)
    return None if path == ".." or path.startswith("../") or path == "." else path


def prefix_of(image: str) -> str:
    """The first two parts of the path under data/ (`coco/train2017`), or OUTSIDE."""
    rel = data_relative(image)
    if rel is None:
        return OUTSIDE
    first = rel.find("/")
    second = rel.find("/", first + 1) if first >= 0 else -1
    return rel if second < 0 else rel[:second]


# ------------------------------------------------------------------------------------------------ streaming helpers


class _Prepend:
    """A binary stream with some already-read bytes put back in front (to peek at the first JSON token)."""

    def __init__(self, head: bytes, rest: BinaryIO):
        self.head, self.rest = head, rest

    def read(self, n: int = -1) -> bytes:
        if self.head:
            out, self.head = (
                (self.head, b"") if n < 0 or n >= len(self.head) else (self.head[:n], self.head[n:])
            )
            return out
        return self.rest.read(n)


def _first_token(stream: BinaryIO, label: str) -> tuple[bytes, _Prepend]:
    head = b""
    while chunk := stream.read(64):
        head += chunk
        if head.lstrip():
            return head.lstrip()[:1], _Prepend(head, stream)
    raise AnnotationError(f"{label}: empty file, not JSON")


def _items(stream: BinaryIO, label: str, *, allow_object: bool = False) -> tuple[str, Iterator]:
    token, stream = _first_token(stream, label)
    if token == b"[":
        return "list", array_items(stream)
    if token == b"{" and allow_object:
        return "dict", object_items(stream)
    raise AnnotationError(f"{label}: expected a JSON array{' or object' if allow_object else ''}")


# ------------------------------------------------------------------------------------------------ the bbox JSON


def _box_problem(entry: object) -> tuple[str, str] | None:
    """(rule, reason) for the first thing MGLLaVADataset.__getitem__ would fail on in this bbox entry, or None.

    The trainer's lines, in the order it runs them (PhoenixZ810/MG-LLaVA @ 3237152):
    `mg_llava/module/mg_llava_dataset.py:72-74` takes `boxes`, `labels`, `scores`; `:79` `adjust_padding_boxes`
    (`mg_llava/dataset/utils.py:717-727`, `pad_image_to_square = True` in every shipped config) does `box[1] + delta`
    on each row; `bbox_nms` (`utils.py:558-565`) does `set(labels)`, `torch.tensor(boxes).reshape(-1, 4)`,
    `torch.tensor(scores)` and `batched_nms(boxes.float(), scores, labels)`, whose CPU kernel
    (pytorch/vision `torchvision/csrc/ops/cpu/nms_kernel.cpp` @ 01d5d10) checks one box per score and that the scores
    have the boxes' dtype (float32). Each rule accepts exactly what those lines accept: a bool is a number to
    `torch.tensor` and to `+` (0/1), any hashable JSON value (string, number, bool, null) is a label, and a
    score list with at least one fractional number becomes float32 (ints and bools alone give int64 or bool).
    """
    if not isinstance(entry, dict):
        return "boxes_malformed", "entry is not an object"
    if "boxes" not in entry or "scores" not in entry or "labels" not in entry:
        missing = [k for k in ("boxes", "scores", "labels") if k not in entry]
        return "boxes_malformed", f"no {', '.join(missing)}"
    boxes, scores, labels = entry["boxes"], entry["scores"], entry["labels"]
    # Plain loops over exact types (JSON gives list, dict, str, int, float, bool, None): this runs for every entry
    # of 1.3M-entry bbox JSONs, where nested all() generators were half of `verify`'s time.
    if type(boxes) is not list:
        return "boxes_malformed", "boxes are not rows of 4 numbers"
    numbers, coordinates_ok = _NUMBER_TYPES, True
    for b in boxes:
        if type(b) is not list or len(b) != 4:
            return "boxes_malformed", "boxes are not rows of 4 numbers"
        coordinates_ok = coordinates_ok and (
            type(b[0]) in numbers
            and type(b[1]) in numbers
            and type(b[2]) in numbers
            and type(b[3]) in numbers
        )
    if not coordinates_ok:
        i, j = next((i, j) for i, b in enumerate(boxes) if (j := _first_non_number(b)) >= 0)
        return (
            "box_coordinates_invalid",
            f"boxes[{i}][{j}] is {_json_kind(boxes[i][j])}: torch.tensor(boxes) fails",
        )
    if type(scores) is not list or len(scores) != len(boxes):
        return (
            "boxes_malformed",
            f"{len(scores) if isinstance(scores, list) else 'no list of'} scores for {len(boxes)} boxes",
        )
    if not isinstance(labels, list) or len(labels) != len(boxes):
        return (
            "boxes_malformed",
            f"{len(labels) if isinstance(labels, list) else 'no list of'} labels for {len(boxes)} boxes",
        )
    for label in labels:
        if type(label) not in _HASHABLE_JSON and not _hashable(label):
            i = next(i for i, x in enumerate(labels) if x is label)  # this one: any earlier would have failed
            return "box_labels_unhashable", f"labels[{i}] is {_json_kind(label)}: set(labels) fails"
    fractional = False
    for v in scores:
        if type(v) is float:
            fractional = True
        elif type(v) not in _NUMBER_TYPES:
            j = next(j for j, x in enumerate(scores) if x is v)
            return "box_scores_invalid", f"scores[{j}] is {_json_kind(v)}: torch.tensor(scores) fails"
    if scores and not fractional:
        kind = "bool" if all(type(s) is bool for s in scores) else "int64"
        return (
            "box_scores_not_float",
            f"scores are all whole numbers ({kind} tensor): batched_nms needs float32",
        )
    return None


_NUMBER_TYPES = frozenset({int, float, bool})  # what torch.tensor takes as a number (a bool becomes 0/1)
_HASHABLE_JSON = frozenset({str, int, float, bool, type(None)})


def _first_non_number(values: list) -> int:
    """The index of the first value torch.tensor does not take as a number, or -1."""
    for i, v in enumerate(values):
        if type(v) not in _NUMBER_TYPES:
            return i
    return -1


def _hashable(value: object) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _json_kind(value: object) -> str:
    if value is None:
        return "a null"
    if isinstance(value, str):
        return f"a string {value[:20]!r}"
    return {list: "a list", dict: "an object", tuple: "a list"}.get(type(value), f"a {type(value).__name__}")


@dataclass
class Boxes:
    """A bbox JSON as the trainer keys it: a list becomes {str(id): entry}, an object is used as is."""

    keys: set[str] = field(default_factory=set)
    malformed: dict[str, tuple[str, str]] = field(default_factory=dict)  # key -> (rule, reason)
    without_id: int = 0
    first_without_id: list[int] = field(default_factory=list)

    @classmethod
    def read(cls, stream: BinaryIO, *, label: str) -> Boxes:
        out = cls()
        try:
            shape, items = _items(stream, label, allow_object=True)
            for i, item in enumerate(items):
                if shape == "dict":
                    key, entry = item
                elif not isinstance(item, dict) or "id" not in item:
                    out.without_id += 1
                    if len(out.first_without_id) < LISTED:
                        out.first_without_id.append(i)
                    continue
                else:
                    key, entry = str(item["id"]), item
                out.keys.add(key)
                problem = _box_problem(entry)
                if problem:
                    out.malformed[key] = problem
                elif out.malformed:  # a later entry with the same id wins, as in the dict comprehension
                    out.malformed.pop(key, None)
        except StreamError as e:
            raise AnnotationError(f"{label}: not valid JSON ({e})") from None
        return out


# ------------------------------------------------------------------------------------------------ one sample


# ------------------------------------------------------------------------------------------------ counts


@dataclass
class Finding:
    count: int = 0
    first: list[str] = field(default_factory=list)

    def add(self, what: str, n: int = 1) -> None:
        self.count += n
        if len(self.first) < LISTED:
            self.first.append(what)


@dataclass
class PrefixCounts:
    referenced: int = 0
    present: int = 0
    missing: int = 0
    broken: int = 0
    skipped: int = 0
    first_missing: list[str] = field(default_factory=list)
    jsons: list[str] = field(default_factory=list)  # the training JSONs citing it

    def add(self, path: str, status: Status, json: str) -> None:
        self.referenced += 1
        if not self.jsons or self.jsons[-1] != json and json not in self.jsons:
            self.jsons.append(json)
        if status == "present":
            self.present += 1
            return
        setattr(self, status, getattr(self, status) + 1)
        if status != "present" and len(self.first_missing) < LISTED_PER_PREFIX:
            self.first_missing.append(path)

    def merge(self, later: PrefixCounts) -> None:
        for status in ("referenced", "present", "missing", "broken", "skipped"):
            setattr(self, status, getattr(self, status) + getattr(later, status))
        self.first_missing += later.first_missing[: max(0, LISTED_PER_PREFIX - len(self.first_missing))]
        self.jsons += [j for j in later.jsons if j not in self.jsons]


_RESOLVED_RULE = {"missing": "image_missing", "broken": "image_broken", "skipped": "image_skipped"}


@dataclass
class Check:
    """The outcome of checking training JSONs; `as_report()` is report.json's `ready_to_train`.

    `workers` > 1 resolves images in a thread pool (a decoding resolver); results are taken in sample order, so the
    first offending paths are the same whatever the thread timing. `progress(samples, images)` is called as it goes.
    """

    workers: int = 1
    progress: Callable[[int, int], None] | None = None
    contract: Contract = MGLLAVA
    image_prefix: Callable[[str], str] = (
        prefix_of  # groups the references (a function: checks cross processes)
    )
    files: list[dict] = field(default_factory=list)
    prefixes: dict[str, PrefixCounts] = field(default_factory=dict)
    findings: dict[str, Finding] = field(default_factory=dict)
    samples: int = 0
    text_only: int = 0
    first_missing: list[str] = field(default_factory=list)
    first_broken: list[str] = field(default_factory=list)
    skipped_reasons: dict[str, str] = field(default_factory=dict)
    pitfalls: pitfalls.Tally = field(default_factory=pitfalls.tally)  # the named checks, per folder

    def __post_init__(self) -> None:
        self.rules: Rules = {}
        self._use(self.contract.rules)

    def _use(self, rules: Rules) -> None:
        """Count `rules` too: a file read through another contract adds its rules; a rule both trainers have
        (images missing, say) is one count, citing both trainers' lines."""
        for rule, (effect, what, where) in rules.items():
            mine = self.rules.get(rule)
            if mine is None:
                self.rules[rule] = (effect, what, where)
                self.findings.setdefault(rule, Finding())
            elif where not in mine[2]:
                self.rules[rule] = (mine[0], mine[1], f"{mine[2]} | {where}")

    def check_file(
        self,
        name: str,
        samples: BinaryIO,
        resolve: Resolver,
        *,
        boxes_name: str | None = None,
        boxes: BinaryIO | None = None,
        contract: Contract | None = None,
    ) -> dict:
        """Stream one training JSON (and its bbox JSON) through `contract` (default: the check's); returns the
        file's own counts."""
        started = time.monotonic()
        contract = contract or self.contract
        self._use(contract.rules)
        box = Boxes.read(boxes, label=boxes_name or "bbox JSON") if boxes is not None else None
        own = {"json": name, "boxes": boxes_name, "contract": contract.name, "status": "checked"}
        own |= {"samples": 0, "text_only": 0}
        own |= {
            "referenced": 0,
            "present": 0,
            "missing": 0,
            "broken": 0,
            "skipped": 0,
            "ids_without_boxes": 0,
        }
        own_findings = {r: 0 for r in contract.rules}
        typed_ids = "id_types_mixed" in contract.rules

        def hit(rule: str, what: str) -> None:
            own_findings[rule] += 1
            self.findings[rule].add(what)

        if box is not None and box.without_id:
            for i in box.first_without_id:
                hit("box_entry_without_id", f"{boxes_name}[{i}]")
            rest = box.without_id - len(box.first_without_id)  # counted, not listed
            own_findings["box_entry_without_id"] += rest
            self.findings["box_entry_without_id"].count += rest

        why = getattr(resolve, "why", None)  # what the resolver knows beyond the status (a named check)

        def settle(image: str, status: Status) -> None:
            own["referenced"] += 1
            own[status] += 1
            prefix = self.image_prefix(image)
            counts = self.prefixes.get(prefix)
            if counts is None:
                counts = self.prefixes[prefix] = PrefixCounts()
            counts.add(image, status, name)
            said = why(image, status) if why is not None else None
            if said is not None:
                pitfalls.add(self.pitfalls, said, prefix, image, name)
            if status != "present":
                hit(_RESOLVED_RULE[status], image)
                listed = self.first_broken if status == "broken" else self.first_missing
                if len(listed) < LISTED:
                    listed.append(image)
                reason = getattr(resolve, "skipped_reasons", {}).get(data_relative(image) or image)
                if status == "skipped" and reason and len(self.skipped_reasons) < LISTED:
                    self.skipped_reasons[image] = reason

        pending: deque[tuple[str, Future]] = deque()
        pool = ThreadPoolExecutor(self.workers) if self.workers > 1 else None
        first_type: str | None = None
        column = True
        image_samples = 0
        try:
            try:
                _, items = _items(samples, name)
                for index, raw in enumerate(items):
                    s = contract.read_sample(raw)
                    own["samples"] += 1
                    if index == 0 and contract.image_column_kept is not None:
                        column = contract.image_column_kept(raw)
                    where = (f"#{index}" if s.id_type is None else s.label) if s.problems or s.dropped else ""
                    for rule in s.problems:
                        hit(rule, where)
                    if typed_ids and s.id_type is not None:
                        first_type = first_type or s.id_type
                        if s.id_type != first_type:
                            hit("id_types_mixed", f"{s.label} ({s.id_type}, first was {first_type})")
                    if s.text_only:
                        own["text_only"] += 1
                        continue
                    if "image_not_string" in s.problems:
                        continue
                    if s.dropped:
                        hit("dropped_before_reading", where)
                        continue
                    image_samples += 1
                    if box is not None:
                        key = s.key if isinstance(s.key, str) else None  # a float or null id never matches
                        if key is None or key not in box.keys:
                            hit("boxes_missing", s.label)
                        elif key in box.malformed:
                            rule, reason = box.malformed[key]
                            hit(rule, f"{s.label}: {reason}")
                    image = s.image
                    if pool is None:
                        settle(image, resolve(image))
                    else:  # taken in sample order, a few ahead
                        pending.append((image, pool.submit(resolve, image)))
                        while len(pending) > 4 * self.workers:
                            image, status = pending.popleft()
                            settle(image, status.result())
                    if self.progress and own["samples"] % 1000 == 0:
                        self.progress(self.samples + own["samples"], own["referenced"])
            except StreamError as e:
                raise AnnotationError(f"{name}: not valid JSON ({e})") from None
            while pending:
                image, status = pending.popleft()
                settle(image, status.result())
        finally:
            if pool:
                pool.shutdown(cancel_futures=True)
        if not column and image_samples:
            own_findings["image_column_dropped"] = image_samples
            self.findings["image_column_dropped"].count += image_samples
            if len(self.findings["image_column_dropped"].first) < LISTED:
                self.findings["image_column_dropped"].first.append(f"{name}: first sample has no image key")
        own["ids_without_boxes"] = own_findings.get("boxes_missing", 0)
        own["findings"] = {r: n for r, n in own_findings.items() if n}
        own["box_entries"] = len(box.keys) if box is not None else None
        own["seconds"] = round(time.monotonic() - started, 3)
        self.samples += own["samples"]
        self.text_only += own["text_only"]
        self.files.append(own)
        if self.progress:
            self.progress(self.samples, own["referenced"])
        return own

    def merge(self, later: Check) -> None:
        """Take in `later`'s files as if this check had gone on to check them itself: counts add up, and the first
        offending paths and ids stay the first LISTED overall, this check's before `later`'s."""
        self._use(later.rules)
        for rule, finding in later.findings.items():
            mine = self.findings[rule]
            mine.count += finding.count
            mine.first += finding.first[: max(0, LISTED - len(mine.first))]
        for prefix, counts in later.prefixes.items():
            self.prefixes.setdefault(prefix, PrefixCounts()).merge(counts)
        for mine, theirs in (
            (self.first_missing, later.first_missing),
            (self.first_broken, later.first_broken),
        ):
            mine += theirs[: max(0, LISTED - len(mine))]
        for image, reason in later.skipped_reasons.items():
            if len(self.skipped_reasons) < LISTED:
                self.skipped_reasons[image] = reason
        pitfalls.merge(self.pitfalls, later.pitfalls)
        self.samples += later.samples
        self.text_only += later.text_only
        self.files += later.files

    def _named(self, catalog) -> pitfalls.Tally:
        """The named checks' counts: what the resolver said of each image, and the two the check sees itself (images
        in a folder no source lays out, counted where they are not usable; text-only samples, per JSON)."""
        named = {name: dict(places) for name, places in self.pitfalls.items()}
        elsewhere = getattr(catalog, "elsewhere", lambda prefix: None)
        for prefix, counts in sorted(self.prefixes.items()):
            unusable = counts.referenced - counts.present
            if catalog is None or not unusable or catalog.provider(prefix + "/"):
                continue
            place = pitfalls.Place(
                unusable, counts.first_missing, elsewhere(prefix + "/"), None, counts.jsons
            )
            named["outside_layout"][prefix] = place
        for f in self.files:
            if f.get("text_only"):
                named["text_only"][f["json"]] = pitfalls.Place(f["text_only"], jsons=[f["json"]])
        return named

    def absent(self, name: str, boxes_name: str | None, *, optional: bool, why: str) -> None:
        self.files.append(
            {
                "json": name,
                "boxes": boxes_name,
                "status": "absent (optional)" if optional else "absent",
                "note": why,
            }
        )

    def as_report(self, catalog: Catalog | None = None, *, sources: dict[str, dict] | None = None) -> dict:
        """`catalog` names the source of each prefix: a Catalog, or a recipe's view of one
        (`mgdata.recipes.RecipeCatalog`, which may also say what would provide a prefix none of its sources does).
        `sources`: the run's per-source {status, error}, so a missing prefix says why its source has nothing."""
        unprovided = getattr(catalog, "unprovided", lambda prefix: None)
        elsewhere = getattr(catalog, "elsewhere", lambda prefix: None)  # a catalog source outside the recipe
        kinds = ("referenced", "present", "missing", "broken", "skipped")
        total = {k: sum(getattr(p, k) for p in self.prefixes.values()) for k in kinds}
        checked = any(f["status"] == "checked" for f in self.files)
        required_absent = [f["json"] for f in self.files if f["status"] == "absent"]
        rules = self.rules
        blocking = {r: f.count for r, f in self.findings.items() if f.count and rules[r][0] != "dropped"}
        by_prefix = {}
        named = self._named(catalog)
        for prefix, counts in sorted(self.prefixes.items()):
            provider = catalog.provider(prefix + "/") if catalog is not None else None
            state = (sources or {}).get(provider) if provider else None
            other = elsewhere(prefix + "/") if catalog is not None and not provider else None
            by_prefix[prefix] = {
                "source": provider,
                "note": None
                if provider or catalog is None
                else unprovided(prefix)
                or (f"source {other} provides it; the recipe does not have it" if other else NO_PROVIDER),
                "source_status": state.get("status") if state else None,
                "source_error": state.get("error") if state else None,
                **{k: getattr(counts, k) for k in kinds},
                "first_missing": counts.first_missing,
            }
        findings = {
            rule: {
                "effect": rules[rule][0],
                "what": rules[rule][1],
                "trainer": rules[rule][2],
                "count": f.count,
                "first": f.first,
            }
            for rule, f in self.findings.items()
        }
        boxes = self.findings.get("boxes_missing", Finding())
        dropped = self.findings.get("dropped_before_reading", Finding())
        boxed = any(f.get("boxes") for f in self.files if f["status"] == "checked")
        named = pitfalls.report(named, catalog)
        blocked = any(f["count"] for f in named.values() if f["effect"] == "blocks")
        ready = checked and not required_absent and not blocking and not blocked
        verdict = _verdict(checked, ready, required_absent, total, by_prefix, findings, named, boxed=boxed)
        return {
            "contract": self.contract.name,
            "checked": checked,
            "ready": ready,
            "note": verdict,
            **total,
            "missing_by_prefix": {p: c.missing for p, c in sorted(self.prefixes.items()) if c.missing},
            "ids_without_boxes": boxes.count,
            "samples": self.samples,
            "text_only": self.text_only,
            "dropped_before_reading": dropped.count,
            "findings": findings,
            "pitfalls": named,
            "by_prefix": by_prefix,
            "unprovided_prefixes": sorted(p for p, b in by_prefix.items() if b["note"] and not b["source"]),
            "first_missing": self.first_missing,
            "first_broken": self.first_broken,
            "first_ids_without_boxes": boxes.first,
            "skipped_at_extraction": self.skipped_reasons,
            "files": self.files,
        }


def _verdict(
    checked: bool,
    ready: bool,
    absent: list[str],
    total: dict,
    by_prefix: dict,
    findings: dict,
    named: dict,
    *,
    boxed: bool,
) -> str:
    dropped = findings.get("dropped_before_reading", {}).get("count", 0)
    if ready:
        notes = pitfalls.messages(named, "note")
        return (
            f"ready to train: all {total['referenced']:,} referenced images open as the trainer opens them"
            + (" and every image sample has well-formed boxes" if boxed else "")
            + (f" ({dropped:,} samples the trainer drops before reading, not required)" if dropped else "")
            + (f"; notes: {'; '.join(notes)}" if notes else "")
        )
    if not checked:
        return "not checked: no training JSON was there to read" + (
            f" ({', '.join(absent)})" if absent else ""
        )
    problems = []
    outside = named["outside_layout"]["by"]  # said below, by its named check
    for prefix, p in by_prefix.items():
        if p["missing"] and prefix not in outside:
            why = ""
            if p["source"] and p["source_status"] not in (None, "ok"):
                why = f": source {p['source']} {p['source_status']}" + (
                    f" ({_short(p['source_error'])})" if p["source_error"] else ""
                )
            elif p["note"]:
                why = f": {p['note']}"
            problems.append(f"{p['missing']:,} {prefix} missing{why}")
    for rule, f in findings.items():
        if f["count"] and f["effect"] != "dropped" and rule != "image_missing":
            problems.append(f"{f['count']:,} {f['what']}")
    problems += pitfalls.messages(named, "blocks")
    problems += [f"{a} absent" for a in absent]
    return "not ready: " + "; ".join(problems)


def _short(error: str) -> str:
    """The first sentence of a source's error (a skipped DocVQA's says where to register)."""
    first = error.split(". ")[0].strip()
    if len(first) <= 100:
        return first
    cut = first.rfind(", ", 0, 100)
    return (first[:cut] if cut > 0 else first[:100]) + ", ..."


# ------------------------------------------------------------------------------------------------ resolvers


def trainer_opens(path: str | os.PathLike) -> str | None:
    """Open and convert a file exactly as the trainer does (Pillow defaults); None if it works, else why not.

    Above MAX_IMAGE_PIXELS Pillow only warns (DecompressionBombError comes above twice that); the warning is left to
    the caller's filters (`verify` ignores it), since changing filters here would race across threads."""
    return _open_as_trainer(path)[0]


def _open_as_trainer(path: str | os.PathLike) -> tuple[str | None, str | None]:
    """(`trainer_opens`'s answer, the format Pillow found in the bytes)."""
    from PIL import Image

    from mgdata.images import EXTERNAL_PROGRAM_FORMATS

    fmt = None
    try:
        with Image.open(path) as im:
            fmt = im.format
            if im.format in EXTERNAL_PROGRAM_FORMATS:
                return f"{im.format} runs an external program to decode; not checked, not accepted", fmt
            im.convert("RGB")
    except Exception as e:  # what the trainer would raise
        return f"{type(e).__name__}: {e}", fmt
    return None, fmt


def store_resolver(
    store, sources: list[str], *, layout_dir: str | os.PathLike | None = None, manifests=None
) -> Resolver:
    """Status of an image from the sources' latest manifests (and the local tree when there is one). `manifests`:
    a `manifest.SourceManifests` to read them through (local copies); by default each is read from the store."""
    import pyarrow.compute as pc

    from mgdata import manifest
    from mgdata.extract import read_skipped

    usable: set[str] = set()
    quarantined: set[str] = set()
    skipped: dict[str, str] = {}
    skipped_members: dict[str, dict] = {}  # per source: reason -> {count, first}
    said: dict[str, pitfalls.Why] = {}  # the few paths a named check names: dead URLs, misnamed formats
    manifests = manifests or manifest.SourceManifests(store, None)  # no copies: each read from the store
    skip_records = read_skipped(store, sources)
    for source in sources:
        columns = ["path", "status", "format", "error"]
        table = manifests.read(source, columns)
        if table is not None:
            usable.update(manifest.usable(table)["path"].to_pylist())
            # `missing` rows (dead URLs) have no file at all: missing, not broken
            quarantined.update(table.filter(pc.equal(table["status"], "invalid"))["path"].to_pylist())
            said.update(_said_of_rows(table, source))
        paths, skipped_members[source] = skip_records[source]
        skipped.update(paths)
    root = Path(layout_dir) if layout_dir else None

    def in_store(path: str | None) -> Status:
        """A data/-relative path's status in the manifests alone."""
        if path is None:
            return "missing"
        if path in usable:
            return "present"
        if path in quarantined:
            return "broken"
        return "skipped" if path in skipped else "missing"

    def resolve(image: str) -> Status:
        path = data_relative(image)
        if path is None and root is not None and image.startswith("/"):
            inside = Path(posixpath.normpath(image))
            path = str(inside.relative_to(root)) if inside.is_relative_to(root) else None
        status = in_store(path)
        if status == "present" and root is not None and not (root / path).is_file():
            return "missing"
        return status

    def why(image: str, status: Status) -> pitfalls.Why | None:
        """What a named check says of an image, by its manifest row, where the status agrees with the row."""
        w = said.get(data_relative(image) or "") if said else None
        return w if w is not None and _SAID_STATUS[w.check] == status else None

    why.present = any(_SAID_STATUS[w.check] == "present" for w in said.values())  # type: ignore[attr-defined]
    resolve.why = why  # type: ignore[attr-defined]
    in_store.why = why  # type: ignore[attr-defined]  # (a data/-relative path is its own `image`)
    resolve.in_store = in_store  # type: ignore[attr-defined]  # the same manifests, read once, without the tree
    resolve.skipped_reasons = skipped  # type: ignore[attr-defined]
    resolve.skipped_members = skipped_members  # type: ignore[attr-defined]
    return resolve


# the status an image has when a named check's manifest row is the reason (a layout tree can still disagree)
_SAID_STATUS = {"url_dead": "missing", "format_misnamed": "present", "format_misnamed_quarantined": "broken"}


def _said_of_rows(table, source: str) -> dict[str, pitfalls.Why]:
    """The rows a named check names: `missing` rows (a URL list's dead URLs: nothing was ever delivered), and rows
    whose original bytes are another format than the path's name, re-encoded (`normalized`) or quarantined."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from mgdata.images import misnamed

    out: dict[str, pitfalls.Why] = {}
    dead = table.filter(pc.equal(table["status"], "missing"))
    for path, error in zip(dead["path"].to_pylist(), dead["error"].to_pylist(), strict=True):
        out[path] = pitfalls.Why("url_dead", source, None, error or "")
    converted = pc.is_in(table["status"], value_set=pa.array(["normalized", "invalid"]))
    odd = table.filter(pc.and_(converted, pc.is_valid(table["format"])))
    for row in odd.select(["path", "status", "format"]).to_pylist():
        promised = misnamed(row["path"], row["format"])
        if promised is not None:
            check = "format_misnamed" if row["status"] == "normalized" else "format_misnamed_quarantined"
            how = "re-encoded at extraction" if row["status"] == "normalized" else "quarantined"
            out[row["path"]] = pitfalls.Why(check, source, None, f"{row['format']} bytes, {how}")
    return out


def folder_resolver(data_dir: str | os.PathLike, *, decode: bool = True) -> Resolver:
    """Status of an image in a local data/ folder, joined as the trainer joins it; `decode`: opened as it opens it
    (and then an image whose bytes are another format than its name is said: the trainer reads it by content)."""
    from mgdata.images import misnamed as promised

    base = os.path.join(os.fspath(data_dir), "")  # with its trailing slash ("" stays "")
    misnamed: dict[str, str] = {}  # image -> the format of its bytes

    def resolve(image: str) -> Status:
        path = image if image.startswith("/") else base + image  # os.path.join(data_dir, image), inlined
        try:
            if not S_ISREG(os.stat(path).st_mode):  # os.path.isfile, inlined: one call per image
                return "missing"
        except (OSError, ValueError):
            return "missing"
        if not decode:
            return "present"
        error, fmt = _open_as_trainer(path)
        if error is None and promised(image, fmt):
            misnamed[image] = fmt
        return "broken" if error else "present"

    def why(image: str, status: Status) -> pitfalls.Why | None:
        fmt = misnamed.get(image) if status == "present" else None
        return pitfalls.Why("format_misnamed", None, None, f"{fmt} bytes") if fmt else None

    resolve.why = why  # type: ignore[attr-defined]
    return resolve


# ------------------------------------------------------------------------------------------------ the run's check


class StoredKeys:
    """Whether a key is in the store, from one listing per folder asked about: the training JSONs sit a few to a
    folder, so checking that a run's dozen JSONs and bbox JSONs exist costs a LIST per folder, not a HEAD each. A
    folder that holds more than a listing page (1,000 keys), or a key at the top, is asked about key by key."""

    PAGE = 1000

    def __init__(self, store):
        self.store = store
        self._folders: dict[str, set[str] | None] = {}

    def __contains__(self, key: str) -> bool:
        folder = key.rsplit("/", 1)[0] + "/" if "/" in key else None
        if folder is not None and folder not in self._folders:
            keys = {o.key for o in itertools.islice(self.store.list(folder), self.PAGE + 1)}
            self._folders[folder] = keys if len(keys) <= self.PAGE else None
        known = self._folders.get(folder) if folder is not None else None
        return key in known if known is not None else self.store.stat(key) is not None


def check_store(
    store,
    catalog: Catalog,
    *,
    layout_dir: str | os.PathLike | None = None,
    sources: dict[str, dict] | None = None,
    resolve: Resolver | None = None,
    stored: StoredKeys | None = None,
) -> dict:
    """Check every training JSON the catalog declares against the store's manifests (report.json `ready_to_train`).

    `sources`: the run's per-source outcome ({status, error}), so the verdict says why a prefix is missing.
    `resolve`: a `store_resolver` over the catalog's sources already made (its manifests are read once a run).
    `stored`: which JSONs are in the store, when the caller checks more (the recipes' JSONs) from the same folders."""
    resolve = resolve or store_resolver(store, list(catalog.sources), layout_dir=layout_dir)
    stored = stored if stored is not None else StoredKeys(store)
    check = Check()
    for t in catalog.training:
        check_stored(
            store, check, t.json_key, t.boxes, resolve, optional=t.optional, contract=CONTRACTS[t.contract],
            stored=stored,
        )  # fmt: skip
    report = check.as_report(catalog, sources=sources)
    # the skip records the resolver read (one listing per source, not a second one here)
    report["skipped_members"] = {name: r for name, r in resolve.skipped_members.items() if r}
    return report


def check_stored(
    store,
    check: Check,
    key: str,
    boxes: str | None,
    resolve: Resolver,
    *,
    optional: bool,
    contract: Contract | None = None,
    absent: str = "not in the store",
    stored: StoredKeys | None = None,
) -> None:
    """Check the training JSON at store key `key` (and its bbox JSON `boxes`) into `check`, or record it absent:
    `absent` says why when the JSON is not there, and the bbox JSON is named when it is the one missing."""

    def there(k: str) -> bool:
        return k in stored if stored is not None else store.stat(k) is not None

    if not there(key):
        check.absent(key, boxes, optional=optional, why=absent)
        return
    if boxes is not None and not there(boxes):
        check.absent(key, boxes, optional=optional, why=f"its bbox JSON {boxes} is not in the store")
        return
    with store.open_range(key) as samples:
        if boxes is None:
            check.check_file(key, samples, resolve, contract=contract)
            return
        with store.open_range(boxes) as b:
            check.check_file(key, samples, resolve, boxes_name=boxes, boxes=b, contract=contract)
