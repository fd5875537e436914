"""The source catalog: what to fetch, from where (ordered mirrors), which checksums, and where each file lands.

The catalog is data, not code (`include/catalog.yaml`); `MGDATA_CATALOG` swaps the whole file, which is how tests and
the offline demo point every source at a loopback mirror. Errors name the source and the field, e.g.
``catalog include/catalog.yaml: source 'coco', field 'files[0].size': Input should be a valid integer``.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mgdata.contracts import CONTRACTS
from mgdata.redact import redact_url

SourceKind = Literal["http", "huggingface", "gdrive", "urllist", "manual"]
# urllist: a JSON of id -> {imageURL, ...} (OCR-VQA's dataset.json); each image is fetched to <target>/<id>.jpg
ArchiveKind = Literal["zip", "tar", "tar.gz", "none", "urllist"]

# matched against the lower-cased name: .JPG and .Jpeg are taken too
IMAGE_PATTERNS = [
    "*.jpg",
    "*.jpeg",
    "*.jpe",
    "*.jfif",
    "*.mpo",
    "*.png",
    "*.gif",
    "*.webp",
    "*.bmp",
    "*.tif",
    "*.tiff",
]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HEX = {"md5": 32, "sha1": 40, "sha256": 64}


class CatalogError(ValueError):
    """The catalog file is missing, unreadable or invalid; the message lists every problem found."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Mirror(_Model):
    """One place a file can be fetched from. Mirrors are tried in catalog order."""

    kind: Literal["http", "huggingface", "gdrive"] = "http"
    url: str | None = None  # http
    repo: str | None = None  # huggingface: owner/name
    repo_type: Literal["model", "dataset"] = "dataset"
    # huggingface: the file's path inside the repo; gdrive: the file's name inside the folder `id`
    path: str | None = None
    # huggingface, instead of `path`: list the repo (API tree listing at plan time) and take every file matching this
    # glob, e.g. "train_json/*.json"; each one becomes a file of the source named by its base name
    path_glob: str | None = None
    revision: str | None = None  # huggingface: a commit (or branch); resolved to the full commit at plan time
    # huggingface: the Hub endpoint; default $HF_ENDPOINT, else https://huggingface.co
    endpoint: str | None = None
    id: str | None = None  # gdrive file id
    # A mirror may hold a different packaging of the same data (different size and hash than the primary).
    size: int | None = None
    sha256: str | None = None

    @model_validator(mode="after")
    def _fields_for_kind(self) -> Mirror:
        need = {"http": ["url"], "huggingface": ["repo"], "gdrive": ["id"]}[self.kind]
        missing = [f for f in need if not getattr(self, f)]
        if missing:
            raise ValueError(f"a {self.kind} mirror needs {', '.join(missing)}")
        if self.kind == "huggingface" and bool(self.path) == bool(self.path_glob):
            raise ValueError("a huggingface mirror needs exactly one of path and path_glob")
        if self.kind == "http" and not re.match(r"^https?://", self.url or ""):
            raise ValueError(f"url must start with http:// or https:// (got {self.url!r})")
        return self

    def describe(self) -> str:
        """Where the mirror is, for records and messages: an HTTP URL without its userinfo and query (tokens)."""
        if self.kind == "http":
            return redact_url(self.url or "")
        if self.kind == "huggingface":
            where = self.path or self.path_glob
            return f"hf://{self.repo_type}s/{self.repo}@{self.revision or 'main'}/{where}"
        return f"gdrive://{self.id}" + (f"/{self.path}" if self.path else "")


def _mirror(value):
    return {"kind": "http", "url": value} if isinstance(value, str) else value


class RemoteFile(_Model):
    """One remote file of a source (an archive, or a plain file such as a JSON) and how its members map to data/."""

    name: str  # stored as raw/<source>/<name>
    mirrors: list[Annotated[Mirror, Field()]]
    size: int | None = Field(default=None, gt=0)
    checksums: dict[Literal["md5", "sha1", "sha256"], str] = {}
    archive: ArchiveKind = "zip"
    target: str | None = None  # data/ prefix (archives) or store key under annotations/ (plain files)
    member_prefix: str = ""  # only members under this prefix are taken, and the prefix is removed
    strip_components: int = Field(default=0, ge=0)
    flatten: bool = False  # keep only the base name (ALLaVA chunks: `unzip -j`)
    include: list[str] = IMAGE_PATTERNS

    @field_validator("mirrors", mode="before")
    @classmethod
    def _mirrors(cls, v):
        if not isinstance(v, list) or not v:
            raise ValueError("at least one mirror is required")
        return [_mirror(m) for m in v]

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"file name {v!r} must be a plain file name (letters, digits, . _ -)")
        return v

    @field_validator("checksums")
    @classmethod
    def _hex(cls, v: dict) -> dict:
        for algo, digest in v.items():
            if not re.fullmatch(rf"[0-9a-f]{{{_HEX[algo]}}}", digest):
                raise ValueError(f"{algo} must be {_HEX[algo]} lowercase hex digits (got {digest!r})")
        return v

    @field_validator("target")
    @classmethod
    def _target(cls, v: str | None) -> str | None:
        if v is not None and (v.startswith("/") or ".." in v.split("/") or v.endswith("/") or not v):
            raise ValueError(f"target {v!r} must be a relative path without '..' or a trailing slash")
        return v

    @model_validator(mode="after")
    def _target_needed(self) -> RemoteFile:
        if self.target is None:
            raise ValueError(
                "target is required (the data/ prefix for archives, the store key for plain files)"
            )
        return self

    @property
    def is_archive(self) -> bool:
        return self.archive != "none"

    @property
    def listed(self) -> bool:
        """The entry stands for every repo file its `path_glob` mirror lists, expanded at plan time."""
        return any(m.path_glob for m in self.mirrors)

    def listed_file(self, mirror: Mirror, path: str) -> RemoteFile:
        """The file a listing found at `path`: named by its base name; a plain file lands at `<target>/<name>`."""
        name = path.rsplit("/", 1)[-1]
        if not _NAME.match(name):
            raise ValueError(f"listed file {path!r}: its name must be letters, digits, . _ -")
        return self.model_copy(
            update={
                "name": name,
                "mirrors": [mirror.model_copy(update={"path": path, "path_glob": None})],
                "target": self.target if self.is_archive else f"{self.target}/{name}",
            }
        )

    def map_member(self, member: str) -> str | None:
        """The data/-relative path a member lands at, or None when the member is not taken."""
        path, skipped = self.place_member(member)
        return None if skipped else path

    def place_member(self, member: str) -> tuple[str | None, str | None]:
        """(path, None) for a member taken; (the path it would have had or None, why not) for one skipped."""
        name = member
        fork = any(p == "__MACOSX" or p.startswith("._") for p in name.split("/"))
        if self.member_prefix:
            if not name.startswith(self.member_prefix):
                return None, "macOS resource fork" if fork else f"outside {self.member_prefix}"
            name = name[len(self.member_prefix) :]
        parts = [p for p in name.split("/") if p not in ("", ".")]  # tar -C dir . gives ./images/x.jpg
        kept = parts[self.strip_components :]
        if not kept:
            return None, "directory"
        if self.flatten:
            kept = kept[-1:]
        path = "/".join([self.target, *kept])
        if fork:
            return path, "macOS resource fork"
        if any(p.startswith(".") for p in parts):
            return path, "hidden file"
        if not any(fnmatch.fnmatch(kept[-1].lower(), pat) for pat in self.include):
            return path, "not an image name"
        return path, None


class Source(_Model):
    title: str
    kind: SourceKind
    enabled: bool = True
    layout: list[str]  # the data/ prefixes this source provides
    expected_images: int | None = Field(default=None, ge=0)
    files: list[RemoteFile] = []
    license: str | None = None
    notes: str | None = None
    manual_instructions: str | None = None

    @model_validator(mode="after")
    def _files(self) -> Source:
        if self.kind != "manual" and not self.files:
            raise ValueError("a source needs at least one file")
        names = [f.name for f in self.files]
        if len(set(names)) != len(names):
            raise ValueError(f"file names must be unique within a source: {names}")
        return self


class Defaults(_Model):
    shard_bytes: int = Field(default=256 * 1024 * 1024, gt=0)  # compressed bytes per extract shard
    max_shards: int = Field(default=256, gt=0, le=1024)  # Airflow's max_map_length is 1024
    max_member_bytes: int = Field(default=512 * 1024 * 1024, gt=0)  # uncompressed cap per member
    max_ratio: float = Field(default=200.0, gt=1)  # uncompressed/compressed cap per member (zip bombs)
    max_archive_bytes: int = Field(default=2**40, gt=0)  # uncompressed cap per streamed tar (tar bombs)


class TrainingFile(_Model):
    """A training JSON the trainer reads, and the bbox JSON that must hold an entry for each of its image samples.

    Both are store keys (where a source's plain file lands, its `target`). The ready-to-train check reads them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    json_key: str = Field(alias="json")
    boxes: str | None = None  # None: the trainer reads no boxes for this JSON
    optional: bool = False  # absent from the store is fine (e.g. LLaVA's mix665k, not in MG-LLaVA's recipe)
    contract: str = "mgllava"  # the trainer that reads it (mgdata.contracts): LLaVA's mix665k is LLaVA's

    @field_validator("contract")
    @classmethod
    def _known_contract(cls, name: str) -> str:
        if name not in CONTRACTS:
            raise ValueError(f"contract {name!r} is not one of {sorted(CONTRACTS)}")
        return name


class Catalog(_Model):
    version: Literal[1] = 1
    defaults: Defaults = Defaults()
    sources: dict[str, Source]
    training: list[TrainingFile] = []

    def provider(self, path: str) -> str | None:
        """The source whose layout holds a data/-relative path, or None when no source provides it."""
        for name, source in self.sources.items():
            if any(path.startswith(prefix + "/") for prefix in source.layout):
                return name
        return None

    def selected(self, names: list[str] | None) -> dict[str, Source]:
        """The enabled sources, or exactly the named ones (in catalog order)."""
        if not names:
            return {n: s for n, s in self.sources.items() if s.enabled}
        unknown = sorted(set(names) - set(self.sources))
        if unknown:
            raise CatalogError(f"unknown source(s) {unknown}; the catalog has {sorted(self.sources)}")
        return {n: s for n, s in self.sources.items() if n in names}


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def parse_catalog(raw: object, origin: str = "<catalog>") -> Catalog:
    if not isinstance(raw, dict) or not isinstance(raw.get("sources"), dict):
        raise CatalogError(f"catalog {origin}: expected a mapping with a 'sources' mapping at the top")
    problems: list[str] = []
    for name, body in raw["sources"].items():
        if not _NAME.match(str(name)):
            problems.append(f"catalog {origin}: source {name!r}: the name must be letters, digits, . _ -")
            continue
        try:
            Source.model_validate(body)
        except ValidationError as e:
            for err in e.errors():
                field = _where(
                    tuple(p for p in err["loc"] if p not in ("function-after[_fields_for_kind(), Mirror]",))
                )
                problems.append(
                    f"catalog {origin}: source {name!r}, field {field or '(source)'!r}: {err['msg']}"
                )
    if problems:
        raise CatalogError("\n".join(problems))
    try:
        return Catalog.model_validate(raw)
    except ValidationError as e:
        raise CatalogError(
            "\n".join(f"catalog {origin}: field {_where(err['loc'])!r}: {err['msg']}" for err in e.errors())
        ) from None


_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_catalog(path: str | Path) -> Catalog:
    path = Path(path)
    try:
        # libyaml's loader when present: the catalog is read at every DAG parse, in every task process (~1,100 a run)
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_SAFE_LOADER)
    except FileNotFoundError:
        raise CatalogError(f"catalog {path}: file not found (set MGDATA_CATALOG to a catalog file)") from None
    except yaml.YAMLError as e:
        raise CatalogError(f"catalog {path}: not valid YAML: {e}") from None
    return parse_catalog(raw, str(path))


SHIPPED_CATALOG = Path(__file__).resolve().parent.parent / "catalog.yaml"
