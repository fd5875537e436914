"""Build an offline mirror: small, realistic replicas of the real plain-HTTP sources, and a catalog pointing at them.

Each replica keeps the real archive's name, URL path and internal layout (COCO's ``train2017/`` root, AI2D's
``ai2d/images/`` next to ``ai2d/annotations/`` and friends, VG's two zips under one ``VG_100K_2/`` URL path), holds
real encoded images of realistic size, and a few deliberately bad members, the kinds the real downloads contain:

* broken (must end in quarantine): a JPEG cut off halfway, a zero-byte file, an HTML error page saved as ``.jpg``;
  for AI2D a PNG whose IDAT data is corrupt (with a valid chunk CRC, so only the decoder can tell);
* normalized (valid after re-encoding): a GIF saved under an image name of another format;
* junk that the layout rules must drop: a ``__MACOSX/`` AppleDouble member (gqa), AI2D's JSON siblings.

The layouts here are written down from shared/reference/sources.md, independently of the catalog's
``member_prefix``/``target`` rules, so the tests can check the catalog's rules against them. Only each file's name
and URL come from the shipped catalog.

Everything is a function of the seed: fixed member order, fixed ``ZipInfo`` metadata, a seeded ``random.Random``
per source (never Pillow's ``effect_noise``, which draws from libc ``rand()``), so a rebuild with the same seed is
byte-identical and a refresh against it sees "unchanged".

Encoding is the cost (~1,200 images at the default size), so each source draws its pictures from a small pool of
blurred gradient-and-shape canvases and a noise tile: every image is a different crop of a canvas, with its own
sharp shapes and its own noise offset, which makes every member distinct at a few milliseconds per image.
"""

from __future__ import annotations

import json
import random
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from mgdata.catalog import SHIPPED_CATALOG, parse_catalog
from mgdata.settings import usable_cores
from offline_mirror import hub
from offline_mirror.media import (
    HTML_PAGE,
    DiagramPool,
    Member,
    PhotoPool,
    ReplicaFile,
    ReplicaSpec,
    apple_double,
    corrupt_idat,
    sha256_file,
    to_gif,
    truncated,
    write_text_atomic,
    write_zip,
)
from offline_mirror.web_replicas import WEB_SOURCES
from offline_mirror.web_replicas import routes as web_routes

__all__ = [
    "DEAD_MIRROR_SOURCE",
    "REPLICAS_JSON",
    "REPLICATED_SOURCES",
    "SHIPPED_CATALOG",
    "ReplicaFile",
    "build_mirror",
    "load_replicas",
    "relpath_for_url",
    "write_catalog",
]

REPLICAS_JSON = "replicas.json"
# The source whose catalog entry gets a dead mirror (a path the server answers with 404) placed first.
DEAD_MIRROR_SOURCE = "gqa"


# --- what each replica looks like ---------------------------------------------------------------------------------


def _coco_name(rng: random.Random, n: int) -> list[str]:
    return [f"{i:012d}.jpg" for i in rng.sample(range(9, 581930), n)]


def _numeric_name(rng: random.Random, n: int) -> list[str]:  # GQA and VG: Visual Genome image ids
    return [f"{i}.jpg" for i in rng.sample(range(1, 2417998), n)]


def _hex16_name(rng: random.Random, n: int) -> list[str]:  # TextVQA: 16 hex digits (Open Images ids)
    names: dict[str, None] = {}  # insertion-ordered: a set's order would depend on PYTHONHASHSEED
    while len(names) < n:
        names[f"{rng.getrandbits(64):016x}.jpg"] = None
    return list(names)


def _ai2d_name(rng: random.Random, n: int) -> list[str]:
    return [f"{i}.png" for i in rng.sample(range(0, 4907), n)]


_SPECS: dict[str, ReplicaSpec] = {
    s.source: s
    for s in [
        ReplicaSpec(
            "coco", "train2017.zip", "train2017/", _coco_name, (2017, 8, 31, 19, 23, 40), force_zip64=True
        ),
        ReplicaSpec(
            "gqa",
            "images.zip",
            "images/",
            _numeric_name,
            (2019, 2, 21, 11, 5, 2),
            zipfile.ZIP_STORED,
            macosx_junk=True,
        ),
        ReplicaSpec(
            "textvqa", "train_val_images.zip", "train_images/", _hex16_name, (2019, 3, 28, 16, 44, 10)
        ),
        ReplicaSpec(
            "vg_part1", "images.zip", "VG_100K/", _numeric_name, (2016, 4, 12, 9, 30, 0), zipfile.ZIP_STORED
        ),
        ReplicaSpec(
            "vg_part2",
            "images2.zip",
            "VG_100K_2/",
            _numeric_name,
            (2016, 4, 12, 10, 2, 0),
            zipfile.ZIP_STORED,
        ),
        ReplicaSpec(
            "ai2d", "ai2d-all.zip", "ai2d/images/", _ai2d_name, (2016, 10, 3, 14, 12, 56), diagrams=True
        ),
    ]
}
# The plain-HTTP replicas built here, then the Hugging Face ones (offline_mirror.hub, served by its Hub stand-in).
REPLICATED_SOURCES: tuple[str, ...] = tuple(_SPECS) + hub.HUB_SOURCES + WEB_SOURCES


# --- archives -----------------------------------------------------------------------------------------------------


def _generate(spec: ReplicaSpec, images: int, seed: int) -> tuple[list[Member], list[str], list[str]]:
    """The members of one replica, in archive order, plus the broken and the normalized member names."""
    if images < 2:
        raise ValueError(
            f"images_per_source must be at least 2 (one of them is the mis-named GIF), got {images}"
        )
    # A str seed is hashed with sha512, not hash(): the same stream in every process.
    rng = random.Random(f"offline_mirror:{seed}:{spec.source}")
    ext = ".png" if spec.diagrams else ".jpg"
    names = spec.names(rng, images + 3)  # + broken: truncated/corrupt, zero bytes, HTML page
    good_names, bad_names = names[:images], names[images:]
    gif_name = good_names[-1]

    files: dict[str, bytes] = {}
    annotations: dict[str, dict] = {}
    if spec.diagrams:
        pool = DiagramPool(rng)
        for name in good_names[:-1]:
            files[name], annotations[name] = pool.png()
        damaged = corrupt_idat(pool.png()[0], rng)
        files[gif_name] = to_gif(pool.image()[0])
    else:
        photos = PhotoPool(rng, images)
        for name in good_names[:-1]:
            files[name] = photos.jpeg()
        damaged = truncated(photos.jpeg())
        files[gif_name] = to_gif(photos.image())
    files[bad_names[0]] = damaged
    files[bad_names[1]] = b""
    files[bad_names[2]] = HTML_PAGE
    assert all(name.endswith(ext) for name in files)

    members: list[Member] = []
    top = spec.root.split("/")[0] + "/"
    dirs = [top] if top == spec.root else [top, spec.root]
    if spec.diagrams:
        dirs = [top, f"{top}annotations/", spec.root, f"{top}questions/"]
    members += [Member(d, None) for d in dirs]
    members += [Member(spec.root + name, files[name]) for name in sorted(files)]
    if spec.diagrams:
        members += _ai2d_siblings(top, annotations, rng)
    if spec.macosx_junk:
        junk = spec.root + sorted(files)[0]
        members += [Member("__MACOSX/", None), Member("__MACOSX/" + spec.root, None)]
        members.append(Member("__MACOSX/" + spec.root + "._" + junk.rsplit("/", 1)[1], apple_double(junk)))
    members.sort(key=lambda m: m.name)
    return members, [spec.root + n for n in bad_names], [spec.root + gif_name]


def _ai2d_siblings(top: str, annotations: dict[str, dict], rng: random.Random) -> list[Member]:
    """AI2D's non-image members: per-image annotation and question JSONs, and categories.json."""
    categories = [
        "lifeCycles",
        "foodChainsWebs",
        "partsOfA",
        "moonPhaseEquinox",
        "rockCycle",
        "waterCNPCycle",
    ]
    out = [Member(f"{top}categories.json", _json({n: rng.choice(categories) for n in sorted(annotations)}))]
    for name, annotation in sorted(annotations.items()):
        out.append(Member(f"{top}annotations/{name}.json", _json(annotation)))
        label = rng.choice(list(annotation["text"].values()))["value"]
        questions = {
            "imageName": name,
            "questions": {
                f"What does the label {label!r} point to?": {
                    "abcLabel": False,
                    "answerTexts": ["a", "b", "c", "d"],
                    "correctAnswer": rng.randrange(4),
                    "questionId": f"{name.split('.')[0]}-0",
                }
            },
        }
        out.append(Member(f"{top}questions/{name}.json", _json(questions)))
    return out


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True).encode()


# --- public API ---------------------------------------------------------------------------------------------------


def relpath_for_url(url: str) -> str:
    """The mirror-root-relative path of a real URL: its host and path, e.g. ``images.cocodataset.org/zips/x.zip``."""
    parts = urlsplit(url)
    if not parts.netloc or not parts.path.strip("/"):
        raise ValueError(f"cannot derive a mirror path from {url!r}")
    return f"{parts.netloc}/{parts.path.strip('/')}"


def _first_url(catalog_file: dict) -> str:
    first = catalog_file["mirrors"][0]
    url = first if isinstance(first, str) else first.get("url")
    if not url:
        raise ValueError(f"{catalog_file['name']}: the first mirror is not an HTTP URL")
    return url


def _shipped_file(raw: dict, source: str, name: str) -> dict:
    body = raw["sources"].get(source)
    if body is None:
        raise ValueError(f"the shipped catalog has no source {source!r}")
    for catalog_file in body.get("files", []):
        if catalog_file["name"] == name:
            return catalog_file
    raise ValueError(f"the shipped catalog's source {source!r} has no file {name!r}")


def load_raw_catalog(path: Path) -> dict:
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    parse_catalog(raw, str(path))  # fail early, naming the field, on a broken shipped catalog
    return raw


def build_mirror(
    root: Path,
    *,
    images_per_source: int = 200,
    sources: list[str] | None = None,
    seed: int = 0,
    shipped: Path = SHIPPED_CATALOG,
    workers: int | None = None,
) -> list[ReplicaFile]:
    """Generate the replicas under ``root`` (at their URL paths) and ``root/replicas.json``; return the records.

    ``images_per_source`` counts the valid image members of each replica (one of them is a mis-named GIF); three
    broken members come on top. The same arguments give byte-identical archives.
    """
    root = Path(root)
    names = list(REPLICATED_SOURCES) if sources is None else list(sources)
    unknown = [n for n in names if n not in REPLICATED_SOURCES]
    if unknown:
        raise ValueError(f"cannot replicate {unknown}; replicable sources: {list(REPLICATED_SOURCES)}")
    raw = load_raw_catalog(shipped)
    hub_names = [n for n in names if n in hub.HUB_SOURCES]
    web_names = [n for n in names if n in WEB_SOURCES]
    names = [n for n in names if n in _SPECS]
    relpaths = {n: relpath_for_url(_first_url(_shipped_file(raw, n, _SPECS[n].file))) for n in names}

    def build_one(name: str) -> ReplicaFile:
        spec = _SPECS[name]
        members, broken, normalized = _generate(spec, images_per_source, seed)
        path = root / relpaths[name]
        write_zip(path, spec, members)
        return ReplicaFile(
            source=name,
            name=spec.file,
            relpath=relpaths[name],
            size=path.stat().st_size,
            sha256=sha256_file(path),
            images=images_per_source,
            broken=len(broken),
            normalized=len(normalized),
            broken_members=tuple(broken),
            normalized_members=tuple(normalized),
        )

    # One thread per source: zlib and some of Pillow's C code release the GIL, so a second core helps a little
    # (measured 18.5 s CPU in 17.6 s wall on a loaded 2-core box). Each source has its own seeded generator,
    # so the output does not depend on scheduling.
    workers = max(1, min(len(names), workers if workers is not None else usable_cores()))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mirror-build") as pool:
        replicas = list(pool.map(build_one, names))
    if web_names:
        from offline_mirror.web_replicas import build_web_replicas

        replicas += build_web_replicas(root, raw, web_names, images_per_source, seed)
    if (
        hub_names
    ):  # after every other replica: MG-LLaVA's training JSONs cite their images (mirror/training_json)
        replicas += hub.build_hub_replicas(
            root, hub_names, images_per_source=images_per_source, seed=seed, raw_catalog=raw, others=replicas
        )
    write_text_atomic(root / REPLICAS_JSON, json.dumps([asdict(r) for r in replicas], indent=2) + "\n")
    return replicas


def load_replicas(root: Path) -> list[ReplicaFile]:
    """The records ``build_mirror`` wrote to ``root/replicas.json``."""
    records = json.loads((Path(root) / REPLICAS_JSON).read_text(encoding="utf-8"))
    return [
        ReplicaFile(
            **{
                **r,
                "broken_members": tuple(r.get("broken_members", ())),
                "normalized_members": tuple(r.get("normalized_members", ())),
            }
        )
        for r in records
    ]


class _NoAliasDumper(yaml.SafeDumper):
    # The shipped catalog's YAML merge keys share lists between entries; write them out in full, not as &id001.
    def ignore_aliases(self, data: object) -> bool:
        return True


def write_catalog(
    root: Path,
    base_url: str,
    replicas: list[ReplicaFile],
    *,
    shipped: Path = SHIPPED_CATALOG,
    shard_bytes: int = 4 * 1024 * 1024,
    out: Path | None = None,
) -> Path:
    """Write the shipped catalog with every replicated file pointed at ``base_url`` and carrying the replica's size
    and sha256; sources without a replica stay as shipped. Returns the path written (default ``root/catalog.yaml``)."""
    base = base_url.rstrip("/")
    raw = load_raw_catalog(shipped)
    raw.setdefault("defaults", {})["shard_bytes"] = shard_bytes
    expected: dict[str, int] = {}
    hub.point_catalog(raw, base, [r for r in replicas if hub.is_hub_replica(r)])
    if any(r.source in WEB_SOURCES for r in replicas):
        from offline_mirror.web_replicas import point_catalog

        point_catalog(raw, base, root, [r for r in replicas if r.source in WEB_SOURCES])
    for replica in (r for r in replicas if not hub.is_hub_replica(r) and r.source not in WEB_SOURCES):
        catalog_file = _shipped_file(raw, replica.source, replica.name)
        mirrors = [f"{base}/{replica.relpath}"]
        if replica.source == DEAD_MIRROR_SOURCE:
            mirrors.insert(
                0, f"{base}/dead/{replica.relpath}"
            )  # 404: exercises the fallback to the next mirror
        catalog_file["mirrors"] = mirrors
        catalog_file["size"] = replica.size
        catalog_file["checksums"] = {"sha256": replica.sha256}
        expected[replica.source] = expected.get(replica.source, 0) + replica.images
    for source, count in expected.items():
        raw["sources"][source]["expected_images"] = count

    out = Path(out) if out is not None else Path(root) / "catalog.yaml"
    parse_catalog(raw, str(out))
    header = (
        f"# Generated by offline_mirror from {Path(shipped).name} for the offline mirror at {base}.\n"
        f"# Replicated sources: {', '.join(sorted({r.source for r in replicas})) or 'none'}. Do not edit: rebuild it.\n"
    )
    body = yaml.dump(raw, Dumper=_NoAliasDumper, sort_keys=False, allow_unicode=True, width=120)
    write_text_atomic(out, header + body)
    return out


def stand_in_routes(root: Path) -> list:
    """Every stand-in a mirror root was built with: the Hugging Face Hub (`hub.json`), Google Drive and the cover
    host (`web.json`); the HTTP replicas need none. What `python -m offline_mirror serve` mounts."""
    stand_in = hub.load_hub(Path(root))
    return (stand_in.routes() if stand_in else []) + web_routes(root)
