"""A Hugging Face Hub stand-in on the mirror server, and small replicas of the Hub-hosted sources to serve from it.

`HubStandIn(root)` keeps repos (model or dataset), each a chain of commits mapping paths to content-addressed blobs
under `<root>/hub/lfs/<sha256>`, recorded in `<root>/hub.json`. Mounted with `MirrorServer(root,
routes=hub.routes())` it answers the requests huggingface_hub and the huggingface adapter make, as huggingface.co
does (the server keeps serving the HTTP replicas beside it, so one base URL is both the mirror and `HF_ENDPOINT`):

    GET  api/{models|datasets}/{repo}/revision/{rev}      repo info: {"id", "sha" (the full commit), "siblings"}
    GET  api/{models|datasets}/{repo}/tree/{rev}[/{dir}]   listing (?recursive=true): files with oid, size, lfs
    POST api/{models|datasets}/{repo}/paths-info/{rev}     the entries of the posted `paths`
    HEAD/GET datasets/{repo}/resolve/{rev}/{path}          the file, with X-Repo-Commit, X-Linked-Etag (sha256),
    HEAD/GET {repo}/resolve/{rev}/{path}  (models)         X-Linked-Size; single byte ranges

A revision is a ref (`main`), a full commit, or a unique prefix of one (the catalog's short hashes). Missing repos,
revisions and files answer 404 with the Hub's `X-Error-Code`. `token` makes every request need
`Authorization: Bearer <token>` (401 otherwise, like a gated repo); `add_fault(match, Fault(...))` misbehaves once on
the first request whose path contains `match`: a 429 carries the Hub's `RateLimit: "api";r=0;t=<retry_after>` header
(no Retry-After), a `drop_after` cuts the body.

`build_hub_replicas` makes the replicas in the real shapes (shared/reference/sources.md 0-4):
LLaVA-Pretrain's `images.zip` with no root folder (`00453/004539375.jpg`) and its 558K JSON; ALLaVA's ten
`image_chunks/images_{0..9}.zip` whose stored folders must be flattened; Vision-FLAN's zip rooted at
`images_191task_1k/`; MG-LLaVA's training JSONs (LLaVA's format, a list of {id, image, conversations}, referencing
images of every replica built, plus a text-only sample and a duplicate id), their bbox JSONs (a list of {id, boxes,
scores, labels}), an eval bbox JSON and a fake checkpoint that must never be fetched; and a small mix665k. Each repo
gets one commit whose hash starts with the catalog's pinned short hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import threading
import zipfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from offline_mirror.media import (
    Member,
    PhotoPool,
    ReplicaFile,
    ReplicaSpec,
    encode,
    sha256_file,
    to_gif,
    truncated,
    write_text_atomic,
    write_zip,
)
from offline_mirror.server import Fault
from offline_mirror.training_json import RECIPE_JSON_SOURCES, box_entry, caption_conversation

HUB_JSON = "hub.json"
BLOBS = "hub/lfs"
HUB_SOURCES: tuple[str, ...] = (
    "llava_pretrain",
    "allava_laion",
    "allava_vflan",
    "mgllava_annotations",
    *RECIPE_JSON_SOURCES,
)
ALLAVA_CHUNKS = 10

_API = re.compile(r"^api/(models|datasets)/([^/]+/[^/]+)/(revision|tree|paths-info)/([^/]+)(?:/(.*))?$")
_RESOLVE = re.compile(r"^(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_RATELIMIT_POLICY = '"fixed window";"api";q=500;w=300'


def _lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubStandIn:
    """Repos, commits and blobs of a stand-in Hub under `root`; `routes()` mounts it on a `MirrorServer`."""

    def __init__(self, root: str | os.PathLike, *, token: str | None = None):
        self.root = Path(root).resolve()
        self.token = token
        self.authorizations: list[
            str | None
        ] = []  # the Authorization header of every request (tests check it)
        self._faults: list[tuple[str, Fault]] = []
        self._lock = threading.Lock()
        path = self.root / HUB_JSON
        self.repos: dict[str, dict] = json.loads(path.read_text()) if path.is_file() else {}

    # --- content ----------------------------------------------------------------------------------------------

    @staticmethod
    def repo_key(repo_type: str, repo: str) -> str:
        return f"{repo_type}s/{repo}"

    def commit(
        self,
        repo_type: str,
        repo: str,
        files: dict[str, Path | bytes],
        *,
        prefix: str = "",
        ref: str = "main",
        remove: tuple[str, ...] = (),
    ) -> str:
        """Add a commit on `ref` holding the parent's files, `files` (path -> a file to move in, or bytes) and not
        `remove`; return its hash (deterministic, starting with `prefix` when it is hex)."""
        key = self.repo_key(repo_type, repo)
        entry = self.repos.setdefault(key, {"refs": {}, "commits": {}})
        parent = entry["refs"].get(ref)
        tree = {
            p: v for p, v in (entry["commits"][parent]["files"] if parent else {}).items() if p not in remove
        }
        for path, content in sorted(files.items()):
            tree[path] = self._blob(content)
        digest = hashlib.sha1(json.dumps([key, parent, tree], sort_keys=True).encode()).hexdigest()
        sha = prefix + digest[len(prefix) :] if re.fullmatch(r"[0-9a-f]{0,40}", prefix) else digest
        entry["commits"][sha] = {"parent": parent, "files": tree}
        entry["refs"][ref] = sha
        return sha

    def _blob(self, content: Path | bytes) -> dict:
        if isinstance(content, bytes):
            data_sha, size = hashlib.sha256(content).hexdigest(), len(content)
        else:
            data_sha, size = sha256_file(content), content.stat().st_size
        blob = self.root / BLOBS / data_sha
        blob.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            if not blob.exists():
                blob.write_bytes(content)
        else:
            os.replace(content, blob)
        pointer = _lfs_pointer(data_sha, size)
        return {
            "blob": f"{BLOBS}/{data_sha}",
            "size": size,
            "sha256": data_sha,
            "oid": _git_blob_id(pointer),
            "pointer_size": len(pointer),
        }

    def save(self) -> Path:
        path = self.root / HUB_JSON
        write_text_atomic(path, json.dumps(self.repos, indent=1, sort_keys=True) + "\n")
        return path

    def resolve_revision(self, key: str, revision: str) -> str | None:
        entry = self.repos.get(key)
        if entry is None:
            return None
        if revision in entry["refs"]:
            return entry["refs"][revision]
        if len(revision) >= 4:
            found = [sha for sha in entry["commits"] if sha.startswith(revision)]
            if len(found) == 1:
                return found[0]
        return None

    # --- misbehaviour -----------------------------------------------------------------------------------------

    def add_fault(self, match: str, fault: Fault) -> None:
        with self._lock:
            self._faults.append((match, fault))

    def _take_fault(self, relpath: str, method: str) -> Fault | None:
        with self._lock:
            for i, (match, fault) in enumerate(self._faults):
                if match in relpath and (fault.method is None or fault.method.upper() == method):
                    return self._faults.pop(i)[1]
        return None

    # --- HTTP -------------------------------------------------------------------------------------------------

    def routes(self) -> list[tuple[str, object]]:
        """(prefix, handler) pairs: the API, dataset resolves, and one resolve prefix per model repo."""
        models = sorted(k[len("models/") :] for k in self.repos if k.startswith("models/"))
        return [("api/", self.handle), ("datasets/", self.handle)] + [
            (f"{repo}/resolve/", self.handle) for repo in models
        ]

    def handle(self, req, relpath: str, method: str) -> None:
        head = method == "HEAD"
        self.authorizations.append(req.headers.get("Authorization"))
        fault = self._take_fault(relpath, method)
        if fault is not None and fault.status is not None:
            headers = {}
            if fault.status == 429:
                headers = {
                    "RateLimit": f'"api";r=0;t={int(fault.retry_after or 0)}',
                    "RateLimit-Policy": _RATELIMIT_POLICY,
                }
            req.send_json(fault.status, {"error": "injected"}, headers, head=head)
            return
        if self.token is not None and req.headers.get("Authorization") != f"Bearer {self.token}":
            req.send_json(
                401, {"error": "Access to this repo is restricted."}, {"X-Error-Code": "GatedRepo"}, head=head
            )
            return
        api = _API.match(relpath)
        if api:
            kind, repo, op, revision, rest = api.groups()
            self._api(req, f"{kind}/{repo}", op, revision, rest or "", method)
            return
        resolve = _RESOLVE.match(relpath)
        if resolve:
            kind = "datasets" if resolve.group(1) else "models"
            self._resolve(req, f"{kind}/{resolve.group(2)}", resolve.group(3), resolve.group(4), head, fault)
            return
        req.send_json(404, {"error": "not found"}, head=head)

    def _commit_files(self, req, key: str, revision: str, head: bool) -> tuple[str, dict] | None:
        if key not in self.repos:
            req.send_json(404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}, head=head)
            return None
        sha = self.resolve_revision(key, revision)
        if sha is None:
            req.send_json(
                404, {"error": f"Invalid rev id: {revision}"}, {"X-Error-Code": "RevisionNotFound"}, head=head
            )
            return None
        return sha, self.repos[key]["commits"][sha]["files"]

    def _api(self, req, key: str, op: str, revision: str, rest: str, method: str) -> None:
        found = self._commit_files(req, key, revision, False)
        if found is None:
            return
        sha, files = found
        if op == "revision":
            req.send_json(
                200,
                {
                    "id": key.split("/", 1)[1],
                    "sha": sha,
                    "private": False,
                    "siblings": [{"rfilename": p} for p in sorted(files)],
                },
            )
        elif op == "tree":
            query = parse_qs(urlsplit(req.path).query)
            recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
            req.send_json(200, _tree(files, rest.strip("/"), recursive))
        elif method == "POST":  # paths-info
            length = int(req.headers.get("Content-Length") or 0)
            body = req.rfile.read(length).decode()
            if "json" in (req.headers.get("Content-Type") or ""):
                paths = json.loads(body).get("paths", [])
            else:
                paths = parse_qs(body).get("paths", [])
            paths = [paths] if isinstance(paths, str) else paths
            entries = {e["path"]: e for e in _tree(files, "", True)}
            req.send_json(200, [entries[p] for p in paths if p in entries])
        else:
            req.send_json(405, {"error": "paths-info takes POST"})

    def _resolve(self, req, key: str, revision: str, path: str, head: bool, fault: Fault | None) -> None:
        found = self._commit_files(req, key, revision, head)
        if found is None:
            return
        sha, files = found
        blob = files.get(path)
        if blob is None:
            req.send_json(
                404,
                {"error": "Entry not found"},
                {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha},
                head=head,
            )
            return
        headers = {
            "X-Repo-Commit": sha,
            "X-Linked-Etag": f'"{blob["sha256"]}"',
            "X-Linked-Size": str(blob["size"]),
        }
        req.send_path(self.root / blob["blob"], head=head, fault=fault, headers=headers)


def _tree(files: dict, folder: str, recursive: bool) -> list[dict]:
    """The Hub's tree entries under `folder`: directories first level by level, files with their LFS info."""
    prefix = f"{folder}/" if folder else ""
    out: dict[str, dict] = {}
    for path, blob in sorted(files.items()):
        if not path.startswith(prefix):
            continue
        parts = path[len(prefix) :].split("/")
        for depth in range(1, len(parts)):
            if not recursive and depth > 1:
                break
            d = prefix + "/".join(parts[:depth])
            out.setdefault(d, {"type": "directory", "oid": _git_blob_id(d.encode()), "size": 0, "path": d})
        if recursive or len(parts) == 1:
            out[path] = {
                "type": "file",
                "oid": blob["oid"],
                "size": blob["size"],
                "path": path,
                "lfs": {"oid": blob["sha256"], "size": blob["size"], "pointerSize": blob["pointer_size"]},
            }
    return list(out.values())


# --- replicas -----------------------------------------------------------------------------------------------------

_DATE = (2023, 7, 6, 10, 0, 0)
_VFLAN_TASKS = (
    "VQA-E+visual_question_answering",
    "PACS+guitar_image_category_classification",
    "CLEVR+question_answer",
    "ExDark+object_recognition",
    "FairFace+gender_classification",
)


def build_hub_replicas(
    root: Path,
    sources: list[str],
    *,
    images_per_source: int,
    seed: int,
    raw_catalog: dict,
    others: list,
) -> list:
    """Build the replicas of the Hub sources in `sources` into a stand-in under `root` (hub.json + blobs).

    `others` are the replicas already built (ReplicaFile): the training JSONs reference their valid images too."""
    from mgdata.catalog import parse_catalog

    catalog = parse_catalog(raw_catalog)
    hub = HubStandIn(root)
    hub.repos = {}
    staged: dict[
        tuple[str, str, str], dict[str, Path | bytes]
    ] = {}  # (type, repo, revision) -> path -> content
    records: list[tuple[str, str, str, str, int, int, int, tuple, tuple]] = []  # pending ReplicaFile fields
    data_paths: dict[str, list[str]] = {}  # source -> valid data/-relative image paths
    work = Path(root) / "hub" / "tmp"
    work.mkdir(parents=True, exist_ok=True)

    def mirror_of(source: str, name: str):
        (f,) = [f for f in catalog.sources[source].files if f.name == name]
        return f, f.mirrors[0]

    def stage(
        source: str,
        name: str,
        content: Path | bytes,
        *,
        path: str | None = None,
        images=0,
        broken=(),
        normalized=(),
    ):
        f, m = mirror_of(source, name)
        repo_path = path or m.path
        staged.setdefault((m.repo_type, m.repo, m.revision or "main"), {})[repo_path] = content
        records.append(
            (
                source,
                repo_path.rsplit("/", 1)[-1],
                m.repo_type,
                m.repo,
                m.revision or "main",
                repo_path,
                images,
                tuple(broken),
                tuple(normalized),
            )
        )

    def zip_of(source: str, name: str, members: list, date=_DATE) -> Path:
        path = work / f"{source}-{name}"
        write_zip(path, ReplicaSpec(source, name, "", None, date, zipfile.ZIP_STORED), members)
        return path

    rng_for = lambda source: random.Random(f"offline_mirror.hub:{seed}:{source}")  # noqa: E731

    if "llava_pretrain" in sources:
        rng = rng_for("llava_pretrain")
        photos = PhotoPool(rng, images_per_source)
        ids = rng.sample(range(10, 600_000), images_per_source + 1)
        names = [f"{i // 10000:05d}/{i:09d}.jpg" for i in ids]
        good, bad = names[:images_per_source], names[images_per_source]
        files = {n: photos.jpeg() for n in good}
        files[bad] = truncated(photos.jpeg())  # a scrape cut short: lands in quarantine
        folders = sorted({n.split("/")[0] + "/" for n in names})
        members = [Member(d, None) for d in folders] + [Member(n, files[n]) for n in sorted(files)]
        members.sort(key=lambda m: m.name)
        stage(
            "llava_pretrain",
            "images.zip",
            zip_of("llava_pretrain", "images.zip", members),
            images=len(good),
            broken=[bad],
        )
        data_paths["llava_pretrain"] = [f"LLaVA-Pretrain/images/{n}" for n in good]
        meta = [
            {"id": n.split("/")[1][:-4], "image": n, "conversations": caption_conversation(rng, image=True)}
            for n in good
        ]
        stage("llava_pretrain", "blip_laion_cc_sbu_558k.json", json.dumps(meta).encode())

    if "allava_laion" in sources:
        rng = rng_for("allava_laion")
        photos = PhotoPool(rng, images_per_source)
        per_chunk = max(1, images_per_source // ALLAVA_CHUNKS)
        ids = rng.sample(range(100_000_000, 110_000_000), per_chunk * ALLAVA_CHUNKS)
        data_paths["allava_laion"] = []
        for chunk in range(ALLAVA_CHUNKS):
            # The folders stored inside the chunks are dropped on extraction (`unzip -j`); their names are [I].
            names = [f"images_{chunk}/{i}.jpeg" for i in ids[chunk * per_chunk : (chunk + 1) * per_chunk]]
            members = [Member(f"images_{chunk}/", None)] + [Member(n, photos.jpeg()) for n in names]
            name = f"images_{chunk}.zip"
            stage(
                "allava_laion",
                name,
                zip_of("allava_laion", name, members, (2024, 2, 29, 8, 0, 0)),
                images=len(names),
            )
            data_paths["allava_laion"] += [f"allava_laion/images/{n.split('/')[1]}" for n in names]

    if "allava_vflan" in sources:
        rng = rng_for("allava_vflan")
        photos = PhotoPool(rng, images_per_source)
        names, members = [], [Member("images_191task_1k/", None)]
        for i in range(images_per_source):
            task = rng.choice(_VFLAN_TASKS)
            png = i % 5 == 4  # Vision-FLAN mixes PNG and JPEG
            name = f"images_191task_1k/{task}_{rng.randrange(1000)}_{i:06d}_{rng.getrandbits(32):08x}.{'png' if png else 'jpg'}"
            image = photos.image()
            if png:
                data = encode(image.resize((image.width // 2, image.height // 2)), "PNG", compress_level=1)
            else:
                data = photos.jpeg()
            names.append(name)
            members.append(Member(name, data))
        gif_name = names[-1].rsplit(".", 1)[0] + ".jpg"  # a GIF under a .jpg name: normalized on the way in
        members[-1] = Member(gif_name, to_gif(photos.image()))
        names[-1] = gif_name
        members.sort(key=lambda m: m.name)
        stage(
            "allava_vflan", "image_191-task_1k.zip", zip_of("allava_vflan", "image_191-task_1k.zip", members, (2023, 12, 1, 0, 0, 0)),
            images=len(names), normalized=[gif_name],
        )  # fmt: skip
        data_paths["allava_vflan"] = [f"allava_vflan/images/{n}" for n in names]

    def image_paths() -> dict[str, list[str]]:
        """The usable images of every replica built, by layout prefix: what the training JSONs may cite."""
        from offline_mirror.training_json import valid_image_paths

        paths = valid_image_paths(root, others, catalog)
        for p in (p for cited in data_paths.values() for p in cited):  # the Hub image replicas built above
            paths.setdefault("/".join(p.split("/")[:2]), []).append(p)
        return paths

    if "mgllava_annotations" in sources:
        rng = rng_for("mgllava_annotations")
        from offline_mirror.training_json import build_training_jsons, docvqa_stand_in

        paths = image_paths()
        paths["docvqa/images"] = docvqa_stand_in(
            root, catalog, images=max(3, images_per_source // 4), seed=seed
        )[1]
        jsons = build_training_jsons(paths, rng, allava_share=max(2, images_per_source // 4))
        glob_entry, glob_mirror = mirror_of("mgllava_annotations", "train_json")
        folder = glob_mirror.path_glob.split("*")[0]
        for repo_path, data in jsons.files(rng).items():
            name = repo_path.rsplit("/", 1)[-1]
            if repo_path.startswith(folder):
                stage("mgllava_annotations", "train_json", data, path=folder + name)
            else:
                stage("mgllava_annotations", name, data)
        # What the model repo also holds and a fetch must never touch: evaluation boxes and a checkpoint.
        key = (glob_mirror.repo_type, glob_mirror.repo, glob_mirror.revision or "main")
        staged[key]["bbox_json/eval/LUMDdata_box/MMBench_DEV_EN_only_bbox.json"] = json.dumps(
            [box_entry(rng, "0")]
        ).encode()
        staged[key]["MG-LLaVA-vicuna-7b/iter_5198.pth"] = (
            b"PK\x03\x04 not a real checkpoint " + rng.randbytes(4096)
        )

    if any(s in sources for s in RECIPE_JSON_SOURCES):  # the other recipes' JSONs, over the same images
        from offline_mirror.training_json import recipe_jsons

        for (source, name), data in recipe_jsons(image_paths(), rng_for("recipes")).items():
            if source in sources:
                stage(source, name, data)

    commits = {}
    for (repo_type, repo, revision), files in sorted(staged.items()):
        prefix = revision if re.fullmatch(r"[0-9a-f]{4,40}", revision) else ""
        commits[(repo_type, repo, revision)] = hub.commit(repo_type, repo, files, prefix=prefix)
    hub.save()
    for leftover in work.iterdir():
        leftover.unlink()
    work.rmdir()

    replicas = []
    for source, name, repo_type, repo, revision, repo_path, images, broken, normalized in records:
        sha = commits[(repo_type, repo, revision)]
        blob = hub.repos[hub.repo_key(repo_type, repo)]["commits"][sha]["files"][repo_path]
        replicas.append(
            ReplicaFile(
                source=source,
                name=name,
                relpath=blob["blob"],
                size=blob["size"],
                sha256=blob["sha256"],
                images=images,
                broken=len(broken),
                normalized=len(normalized),
                broken_members=broken,
                normalized_members=normalized,
            )  # fmt: skip
        )
    return replicas


def point_catalog(raw: dict, base_url: str, replicas: list) -> None:
    """Point every Hugging Face mirror of the replicated Hub sources at the stand-in (`endpoint`), and set the
    sources' expected image counts. Sizes and sha256 stay out of the catalog: they come from the Hub's metadata."""
    counts: dict[str, int] = {}
    for r in replicas:
        counts[r.source] = counts.get(r.source, 0) + r.images
    for source in counts:
        body = raw["sources"][source]
        for f in body["files"]:
            for m in f["mirrors"]:
                if isinstance(m, dict) and m.get("kind") == "huggingface":
                    m["endpoint"] = base_url
        if body.get("layout"):
            body["expected_images"] = counts[source]


def is_hub_replica(replica) -> bool:
    return replica.relpath.startswith(BLOBS + "/")


def load_hub(root: Path) -> HubStandIn | None:
    return HubStandIn(root) if (Path(root) / HUB_JSON).is_file() else None


__all__ = [
    "HUB_JSON",
    "HUB_SOURCES",
    "HubStandIn",
    "build_hub_replicas",
    "is_hub_replica",
    "load_hub",
    "point_catalog",
]
