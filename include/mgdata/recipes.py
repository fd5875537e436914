"""Recipes: a training corpus as data over the shared store (`include/recipes/<name>.yaml`).

A recipe names the catalog sources it needs, its training JSONs (where they come from, pinned where the facts are
known), the folder of the trainer's tree that is our `data/`, where its folder names differ from ours, and for each
JSON the trainer contract (`mgdata.contracts`) it is read through. Sources are fetched once into the store whatever
the number of recipes that use them; a recipe only adds a reading of them. Adding a recipe over existing sources is
a new YAML file.
"""

from __future__ import annotations

import functools
import posixpath
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mgdata.annotations import OUTSIDE
from mgdata.catalog import Catalog
from mgdata.contracts import CONTRACTS

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
DEFAULT_RECIPE = "mgllava"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RecipeError(ValueError):
    """A recipe file is unreadable or contradicts the catalog; the message names the file."""


class RecipeJSON(_Model):
    """One training JSON of a recipe, as the trainer's launch script points at it (paths relative to its tree)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    stage: str
    json_path: str = Field(alias="json")
    image_folder: str  # the trainer's --image_folder, relative to the tree
    contract: str
    boxes: str | None = None  # the bbox JSON every image sample needs an entry in (MG-LLaVA)
    source: str | None = None  # the catalog source that delivers the JSON, when one does
    store: str | None = (
        None  # its key in the shared store, where that source lands it (else recipes/<name>/<json>)
    )
    url: str | None = None
    revision: str | None = None
    bytes: int | None = Field(default=None, gt=0)
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    samples: int | None = Field(default=None, gt=0)  # the upstream file's sample count, where it is known
    optional: bool = False  # absent is fine (a stage that needs sources outside the catalog)

    @model_validator(mode="after")
    def _known_contract(self) -> RecipeJSON:
        if self.contract not in CONTRACTS:
            raise ValueError(f"contract {self.contract!r} is not one of {sorted(CONTRACTS)}")
        if (self.source is None) == (self.url is None):
            raise ValueError(f"{self.json_path}: give exactly one of source (a catalog source) and url")
        if self.source is not None and self.store is None:
            raise ValueError(f"{self.json_path}: give store, the key where source {self.source} lands it")
        return self


class Recipe(_Model):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]*$")
    title: str
    trainer: str
    data: str  # the folder of the trainer's tree that is our data/ ("." when the tree is data/ itself)
    sources: list[str]
    training: list[RecipeJSON] = Field(min_length=1)
    layout: dict[str, str] = {}  # the trainer's folder under `data` -> ours, where the names differ
    uncatalogued: dict[str, str] = {}  # folders it reads that no catalog source provides: what would

    def data_path(self, image_folder: str, image: str) -> str | None:
        """Where the trainer's `os.path.join(image_folder, image)` lies under its data folder (in its own folder
        names), or None outside it."""
        if image.startswith("/"):
            return None
        path = posixpath.normpath(posixpath.join(image_folder, image))
        data = posixpath.normpath(self.data)
        if data != ".":
            if not path.startswith(data + "/"):
                return None
            path = path[len(data) + 1 :]
        return None if path in ("..", ".") or path.startswith("../") else path

    def theirs(self, folder: str) -> str:
        """One of our data/ folders, in the trainer's folder names (`layout`, read backwards)."""
        for theirs, ours in self.layout.items():
            if folder == ours or folder.startswith(ours + "/"):
                return theirs + folder[len(ours) :]
        return folder

    def ours(self, path: str) -> str:
        """A path under the trainer's data folder, in our data/ names (`layout`)."""
        for theirs, ours in self.layout.items():
            if path == theirs or path.startswith(theirs + "/"):
                return ours + path[len(theirs) :]
        return path


def store_key(recipe: Recipe, t: RecipeJSON) -> str:
    """Where a recipe's training JSON lies in the shared store: where its catalog source lands it, else under
    `recipes/<name>/` at its path in the trainer's tree (put it there to have it checked with every run)."""
    return t.store or f"recipes/{recipe.name}/{t.json_path}"


class RecipeCatalog:
    """A recipe's view of the catalog for one JSON's verdict: the prefix of each image under the trainer's data
    folder, and which of the recipe's sources provides it, with the recipe's folder names mapped onto ours."""

    def __init__(self, recipe: Recipe, catalog: Catalog, image_folder: str):
        self.recipe, self.catalog, self.image_folder = recipe, catalog, image_folder

    def prefix(self, image: str) -> str:
        """The folder an image is counted under: a folder the recipe names, else its first two components."""
        path = self.recipe.data_path(self.image_folder, image)
        if path is None:
            return OUTSIDE
        named = (*self.recipe.layout, *self.recipe.uncatalogued)
        return next((f for f in named if path.startswith(f + "/")), "/".join(path.split("/")[:2]))

    def provider(self, prefix: str) -> str | None:
        name = self.catalog.provider(self.recipe.ours(prefix))
        return name if name in self.recipe.sources else None

    def elsewhere(self, prefix: str) -> str | None:
        """The catalog source that lays out a prefix none of the recipe's sources does (add it to the recipe)."""
        name = self.catalog.provider(self.recipe.ours(prefix))
        return name if name not in self.recipe.sources else None

    def unprovided(self, prefix: str) -> str | None:
        """What would provide a prefix no source of the recipe does, when the recipe says."""
        return next(
            (what for folder, what in self.recipe.uncatalogued.items() if prefix.startswith(folder)), None
        )


def parse_recipe(raw: object, label: str, catalog: Catalog | None = None) -> Recipe:
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(f"recipe {label}: {e}") from None
    if catalog is not None:
        unknown = sorted(set(recipe.sources) - set(catalog.sources))
        delivered = {t.source for t in recipe.training} - {None}
        unknown += sorted(delivered - set(catalog.sources))
        if unknown:
            raise RecipeError(f"recipe {label}: source(s) {unknown} are not in the catalog")
        for t in recipe.training:
            if t.source is not None and not _lands(catalog, t.source, t.store):
                raise RecipeError(
                    f"recipe {label}: source {t.source} lands no file at {t.store} ({t.json_path})"
                )
    return recipe


def _lands(catalog: Catalog, source: str, key: str) -> bool:
    """A catalog source's plain file lands at `key` (its `target`, or under a listed folder's target)."""
    return any(
        not f.is_archive and (f.target == key or (f.listed and key.startswith(f"{f.target}/")))
        for f in catalog.sources[source].files
    )


def recipe_sources(recipe: Recipe) -> list[str]:
    """The sources a recipe's run ingests: its image sources and those that deliver its (non-optional) JSONs."""
    delivering = [t.source for t in recipe.training if t.source and not t.optional]
    return list(dict.fromkeys([*recipe.sources, *delivering]))


def recipe_facts(recipe: Recipe, catalog: Catalog) -> dict:
    """What a recipe amounts to upstream, from the catalog and the recipe's own facts: its samples (the JSONs'
    published counts), images (its sources' expected counts), and the bytes a first run downloads (every file of its
    sources with a known size); `*_known` says whether every part was known."""
    sources = [catalog.sources[n] for n in recipe_sources(recipe)]
    files = [f for s in sources for f in s.files]
    counts = [t.samples for t in recipe.training if not t.optional]
    images = [s.expected_images for s in sources if s.layout]
    return {
        "samples": sum(c or 0 for c in counts),
        "samples_known": all(counts),
        "images": sum(i or 0 for i in images),
        "images_known": all(i is not None for i in images),
        "bytes": sum(f.size or 0 for f in files),
        "bytes_known": all(f.size for f in files),
    }


def run_selection(
    catalog: Catalog,
    sources: list[str] | None,
    recipes: list[str] | None,
    known: dict[str, Recipe] | None = None,
) -> dict:
    """The sources one run ingests: the named sources and every source of the named recipes; with neither, every
    enabled source (MG-LLaVA's corpus). An unknown recipe is a RecipeError naming the shipped ones."""
    names = list(sources or [])
    if recipes:
        known = known if known is not None else load_recipes()
        unknown = sorted(set(recipes) - set(known))
        if unknown:
            raise RecipeError(f"unknown recipe(s) {unknown}; the shipped recipes are {sorted(known)}")
        for r in recipes:
            lacking = [n for n in recipe_sources(known[r]) if n not in catalog.sources]
            if lacking:
                raise RecipeError(
                    f"recipe {r} needs source(s) {lacking}, which the run's catalog does not have"
                )
            names += recipe_sources(known[r])
    return catalog.selected(list(dict.fromkeys(names)) or None)


def load_recipes(folder: str | Path = RECIPES_DIR, catalog: Catalog | None = None) -> dict[str, Recipe]:
    """Every `<name>.yaml` of the folder, by name; the file's stem must be the recipe's name."""
    recipes = {}
    for path in sorted(Path(folder).glob("*.yaml")):
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise RecipeError(f"recipe {path}: not valid YAML: {e}") from None
        recipe = parse_recipe(raw, str(path), catalog)
        if recipe.name != path.stem:
            raise RecipeError(
                f"recipe {path}: its name is {recipe.name!r}, its file must be {recipe.name}.yaml"
            )
        recipes[recipe.name] = recipe
    if not recipes:
        raise RecipeError(f"no recipe in {folder}")
    return recipes


def lay_out(store, recipe: Recipe, catalog: Catalog, root: str | Path) -> dict:
    """The recipe's tree under `root` from the shared store: every usable image of its sources at the path its
    trainer reads, `root/<data>/<its folder>/...`, in its own folder names.

    From a local store every file is a hardlink to the store's object, so a store serving several recipes holds each
    image's bytes once, whatever the number of trees; each training JSON is placed at its path in the tree (absent
    ones are named); a tree is exact (files its sources' manifests no longer list are
    removed) and re-running it places nothing that is already in place (`mgdata.layout.materialize`)."""
    from mgdata import manifest
    from mgdata.layout import add_outcome, materialize, place_object

    data = Path(root) / recipe.data
    outcome: dict = {"root": str(Path(root)), "files": 0, "jsons": {}}
    for t in recipe.training:  # each training JSON at the path its launch script gives
        key = store_key(recipe, t)
        info = store.stat(key)
        dst = Path(root) / t.json_path
        outcome["jsons"][t.json_path] = "absent" if info is None else place_object(store, key, info.size, dst)
    for name in recipe.sources:
        table = manifest.read_table(store, manifest.source_key(name), columns=["path", "bytes", "status"])
        rows = manifest.usable(table) if table is not None else None
        paths = rows["path"].to_pylist() if rows is not None else []
        sizes = rows["bytes"].to_pylist() if rows is not None else []
        for folder in catalog.sources[name].layout:
            cut = len(folder) + 1
            files = [(p[cut:], n) for p, n in zip(paths, sizes, strict=True) if p.startswith(folder + "/")]
            placed = materialize(store, data / recipe.theirs(folder), files, [""], prefix=f"data/{folder}/")
            add_outcome(outcome, placed)
    return outcome


def needed_stages(stages: list[dict]) -> list[dict]:
    """The stages a recipe's verdict rests on: all but the optional ones whose JSON is absent."""
    return [s for s in stages if not (s["optional"] and not s["checked"])]


STAGE_FIELDS = (
    "checked",
    "ready",
    "note",
    "samples",
    "text_only",
    "referenced",
    "present",
    "missing",
    "broken",
)


def check_in_store(
    store,
    recipe: Recipe,
    catalog: Catalog,
    *,
    sources: dict[str, dict] | None = None,
    in_store=None,
    stored=None,
) -> dict:
    """A recipe's ready-to-train verdict from the shared store: each stage's JSON (at its `store_key`) read through
    its contract, each image it names resolved, in our folder names, in the manifests of the recipe's sources.

    `sources`: the run's per-source {status, error}, so a missing folder says why its source has nothing.
    `in_store`: the status of a data/-relative path in the manifests already read (`store_resolver(...).in_store`,
    one read of the manifests for every recipe); by default the recipe's sources' manifests are read here.
    `stored`: an `annotations.StoredKeys` the caller shares between verdicts (one listing per JSON folder)."""
    from mgdata.annotations import Check, check_stored, store_resolver
    from mgdata.contracts import CONTRACTS

    if in_store is None:
        in_store = store_resolver(store, [n for n in recipe.sources if n in catalog.sources]).in_store
    laid_out: dict[str, bool] = {}  # folder (ours) -> one of the recipe's sources lays it out

    # a named check asks again for the image just resolved: the last answer is kept
    @functools.lru_cache(maxsize=1)
    def ours(image: str, folder: str) -> str | None:
        """The image's data/-relative path in our names, or None when the recipe's tree cannot hold it: outside
        its data folder, or in a folder only a source the recipe lacks lays out (the store may hold it, the recipe's
        tree does not)."""
        path = recipe.data_path(folder, image)
        if path is None:
            return None
        path = recipe.ours(path)
        parent = posixpath.dirname(path)
        if parent not in laid_out:
            laid_out[parent] = catalog.provider(path) in recipe.sources
        return path if laid_out[parent] else None

    why_in_store = getattr(in_store, "why", None)
    stages = []
    for t in recipe.training:
        view = RecipeCatalog(recipe, catalog, t.image_folder)

        def resolve(image: str, folder: str = t.image_folder):
            return in_store(ours(image, folder))

        if why_in_store is not None:

            def why(image: str, status, folder: str = t.image_folder):
                path = ours(image, folder) if status != "present" or why_in_store.present else None
                return why_in_store(path, status) if path is not None else None

            resolve.why = why  # type: ignore[attr-defined]
        check = Check(contract=CONTRACTS[t.contract], image_prefix=view.prefix)
        key = store_key(recipe, t)
        where = f"from {t.url}" if t.url else f"from source {t.source}"
        absent = f"not in the store: put it at {key} ({where})"
        check_stored(store, check, key, t.boxes, resolve, optional=t.optional, absent=absent, stored=stored)
        report = check.as_report(view, sources=sources)
        stage = {"stage": t.stage, "json": key, "contract": t.contract, "optional": t.optional}
        stage["pitfalls"] = {name: p["count"] for name, p in report["pitfalls"].items() if p["count"]}
        stages.append(stage | {k: report[k] for k in STAGE_FIELDS})
    needed = needed_stages(stages)
    ready = all(s["ready"] for s in needed)
    blocking = [f"{s['stage']}: {s['note']}" for s in needed if not s["ready"]]
    note = (
        "ready to train: " + ", ".join(s["stage"] for s in needed)
        if ready
        else "not ready: " + "; ".join(blocking)
    )
    return {"title": recipe.title, "trainer": recipe.trainer, "ready": ready, "note": note, "stages": stages}
