"""The known pitfalls of the LLaVA-family corpora, as named checks of the ready-to-train verdict.

Each is a small rule beside the others, with the upstream issue that reported it; the same rules serve the catalog's
check and each recipe's (`mgdata.annotations.Check.as_report`). A resolver says why one image is what it is
(`Why`: a URL its source's list could not deliver, bytes of another format than the name); the check counts those per
folder (`Place`), and each rule here turns one folder's count into a sentence that names the source, its file and the
fix. `effect`: "blocks" (the verdict is not ready) or "note" (the trainer reads on; said, not blocking).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

LISTED = 5  # examples listed per folder

# name -> (effect, what it counts, the upstream issue that reported it)
PITFALLS: dict[str, tuple[str, str, str]] = {
    "url_dead": (
        "blocks",
        "cited images their source's URL list could not deliver (dead URLs)",
        "https://github.com/haotian-liu/LLaVA/issues/1618",
    ),
    "format_misnamed": (
        "note",
        "cited images whose bytes are another format than their name, which the trainer reads "
        "(Pillow opens by content)",
        "https://github.com/haotian-liu/LLaVA/issues/593",
    ),
    "format_misnamed_quarantined": (
        "blocks",
        "cited images whose bytes are another format than their name, quarantined at extraction",
        "https://github.com/haotian-liu/LLaVA/issues/593",
    ),
    "outside_layout": (
        "blocks",
        "cited images in a folder none of the sources lays out",
        "https://github.com/JIA-Lab-research/MGM/issues/23",
    ),
    "text_only": (
        "note",
        "samples with no image, counted apart: nothing to check",
        "https://github.com/haotian-liu/LLaVA/issues/546",
    ),
}


class Why(NamedTuple):
    """What a resolver knows about one image beyond its status."""

    check: str  # a name of PITFALLS
    source: str | None  # the source that was to deliver it (None: the caller names the folder's provider)
    file: str | None  # that source's file (None: the rule finds it in the catalog)
    detail: str  # shown beside the path: the format of the bytes, the dead URL's error


@dataclass
class Place:
    """One named check's count in one folder (or, for text-only samples, one training JSON)."""

    count: int = 0
    first: list[str] = field(default_factory=list)
    source: str | None = None
    file: str | None = None
    jsons: list[str] = field(default_factory=list)  # the training JSONs that cite it

    def add(self, what: str, json: str, n: int = 1) -> None:
        self.count += n
        if len(self.first) < LISTED:
            self.first.append(what)
        if json not in self.jsons:
            self.jsons.append(json)

    def merge(self, later: Place) -> None:
        self.count += later.count
        self.first += later.first[: max(0, LISTED - len(self.first))]
        self.source, self.file = self.source or later.source, self.file or later.file
        self.jsons += [j for j in later.jsons if j not in self.jsons]


Tally = dict[str, dict[str, Place]]  # check -> folder -> its count


def tally() -> Tally:
    return {name: {} for name in PITFALLS}


def add(counts: Tally, why: Why, folder: str, image: str, json: str) -> None:
    place = counts[why.check].get(folder)
    if place is None:
        place = counts[why.check][folder] = Place(source=why.source, file=why.file)
    place.add(f"{image} ({why.detail})" if why.detail else image, json)


def merge(counts: Tally, later: Tally) -> None:
    for name, places in later.items():
        for folder, place in places.items():
            counts[name].setdefault(folder, Place()).merge(place)


# ------------------------------------------------------------------------------------------------ the rules


class Said(NamedTuple):
    """What a rule says of one folder: the source's file at fault, the fix (None: nothing to do), and what is wrong
    (the report's sentence adds the examples and the fix)."""

    file: str | None
    fix: str | None
    says: str


def _cited(p: Place) -> str:
    return ", ".join(p.jsons)


def _sources(catalog) -> dict:
    """The catalog's sources, from a Catalog or a recipe's view of one."""
    return getattr(getattr(catalog, "catalog", catalog), "sources", {}) if catalog is not None else {}


def _url_list(catalog, source: str | None) -> str | None:
    """The name of `source`'s URL-list file (OCR-VQA's dataset.json)."""
    src = _sources(catalog).get(source)
    return next((f.name for f in src.files if f.archive == "urllist"), None) if src is not None else None


def _mirror_path(catalog, source: str | None, folder: str) -> str | None:
    """The fix that takes a URL-list source's images from its archive instead (OCR-VQA's `mirror` path), if it has one."""
    src = _sources(catalog).get(source)
    if src is None or not any(f.archive == "urllist" for f in src.files):
        return None
    mirror = next((f for f in src.files if f.archive != "urllist" and f.target == folder), None)
    if mirror is None:
        return None
    hub = next((m for m in mirror.mirrors if m.kind == "huggingface"), None)
    where = f" on the Hub ({hub.repo})" if hub else ""
    pinned = "the sha256-pinned " if "sha256" in mirror.checksums else ""
    return f"run with ocr_vqa_images=mirror (MGDATA_OCR_VQA_IMAGES=mirror): {pinned}{mirror.name}{where} holds them"


def url_dead(folder: str, p: Place, catalog) -> Said:
    file = p.file or _url_list(catalog, p.source)
    fix = _mirror_path(catalog, p.source, folder) or (
        f"no other path of source {p.source} delivers them: add an archive of them to its files"
    )
    says = f"their URLs in source {p.source}'s {file or 'URL list'} are dead"
    return Said(file, fix, f"{p.count:,} {folder} images cited by {_cited(p)} were never delivered: {says}")


def format_misnamed(folder: str, p: Place, catalog) -> Said:
    # from a manifest (a source named), the store holds them re-encoded; in a local folder, as they are
    how = (
        f"source {p.source} re-encoded them to their name's format at extraction"
        if p.source
        else "Pillow opens by content"
    )
    says = f"hold bytes of another format than their name: the trainer reads them ({how})"
    return Said(p.file, None, f"{p.count:,} {folder} images cited by {_cited(p)} {says}")


def format_misnamed_quarantined(folder: str, p: Place, catalog) -> Said:
    file = p.file or _url_list(catalog, p.source)
    mirror = _mirror_path(catalog, p.source, folder)
    fix = "replace them with copies the trainer opens" + (f", or {mirror}" if mirror else "")
    says = (
        f"are in quarantine/{p.source}/: their bytes are another format than their name and did not convert "
        f"(source {p.source}'s {file or 'files'})"
    )
    return Said(file, fix, f"{p.count:,} {folder} images cited by {_cited(p)} {says}")


def outside_layout(folder: str, p: Place, catalog) -> Said:
    """`p.source`: the catalog source that lays the folder out when the recipe lacks it; else what the recipe's
    `uncatalogued` says would provide it."""
    recipe = hasattr(catalog, "recipe")
    uncatalogued = getattr(catalog, "unprovided", lambda folder: None)(folder)
    if folder.startswith("("):
        fix = "make the JSON's paths relative to the image folder"
    elif p.source:
        fix = f"add source {p.source} to the recipe"
    elif uncatalogued:
        fix = f"no catalog source has it yet: {uncatalogued}"
    else:
        fix = "add a source that lays it out to the catalog" + (" and the recipe" if recipe else "")
    scope = "none of the recipe's sources" if recipe else "no catalog source"
    return Said(None, fix, f"{p.count:,} images cited by {_cited(p)} lie in {folder}, which {scope} lays out")


def text_only(json: str, p: Place, catalog) -> Said:
    return Said(None, None, f"{p.count:,} text-only samples in {json} (no image: nothing to check)")


RULES = {
    "url_dead": url_dead,
    "format_misnamed": format_misnamed,
    "format_misnamed_quarantined": format_misnamed_quarantined,
    "outside_layout": outside_layout,
    "text_only": text_only,
}


def report(counts: Tally, catalog) -> dict:
    """report.json's `pitfalls`: every named check, fired or not, with each folder's sentence."""
    out = {}
    for name, (effect, what, upstream) in PITFALLS.items():
        by = {}
        for folder, p in sorted(counts[name].items()):
            file, fix, says = RULES[name](folder, p, catalog)
            examples = f" ({', '.join(p.first[:3])}{', ...' if p.count > 3 else ''})" if p.first else ""
            message = says + examples + (f"; fix: {fix}" if fix else "")
            by[folder] = {
                "count": p.count,
                "first": p.first,
                "source": p.source,
                "file": file,
                "jsons": p.jsons,
            }
            by[folder] |= {"fix": fix, "message": message}
        count = sum(p["count"] for p in by.values())
        out[name] = {"effect": effect, "what": what, "upstream": upstream, "count": count, "by": by}
    return out


def messages(pitfalls: dict, effect: str) -> list[str]:
    """The sentences of every named check of that effect that fired."""
    return [p["message"] for f in pitfalls.values() if f["effect"] == effect for p in f["by"].values()]
