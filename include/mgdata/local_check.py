"""`verify`'s check of training JSONs on local disk against a data/ folder: one process per JSON when there are several.

MG-LLaVA trains from two JSONs (pretrain and instruct, 1.3M samples each, each with its bbox JSON). Checked one after
the other they take one core; here the first pair is checked by `check_pair` in this process while the others are
checked in worker processes (spawned: nothing of the parent's state is shared, on every platform), one process per
core in all, and the outcomes are merged in the order the files were given (`Check.merge`). The report is the one a
single process checking them one after the other writes, the per-file `seconds` aside. A file that cannot be read
fails the check with its own error, naming it, as it would one after the other: when several fail, the first in the
given order is the one reported. A worker that dies (killed, out of memory) raises `BrokenProcessPool`.

Memory: each process streams its own pair, so the peak is each process's (one bbox JSON's keys) side by side.
"""

from __future__ import annotations

import multiprocessing
import warnings
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, wait
from dataclasses import dataclass

from mgdata.annotations import Check, folder_resolver
from mgdata.contracts import CONTRACTS
from mgdata.settings import usable_cores

Progress = Callable[[int, int], None]  # (samples, images) so far, over every file


@dataclass(frozen=True)
class Pair:
    """A training JSON and the bbox JSON its image samples need an entry in (None: boxes not checked)."""

    json: str
    boxes: str | None = None


@dataclass(frozen=True)
class Options:
    data: str  # the data/ folder the trainer reads
    decode: bool  # open every image as the trainer does (False: existence only, `--fast`)
    threads: int  # images opened at once, per process, when decoding
    contract: str = "mgllava"  # the trainer the JSONs are read by (a name of mgdata.contracts.CONTRACTS)


def ignore_bomb_warnings() -> None:
    """The trainer opens large images too (Pillow raises only above twice the threshold): not worth a line each."""
    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def check_pair(check: Check, pair: Pair, options: Options) -> None:
    """Check one training JSON (and its bbox JSON) into `check`."""
    resolve = folder_resolver(options.data, decode=options.decode)
    with open(pair.json, "rb") as samples:
        if pair.boxes is None:
            check.check_file(pair.json, samples, resolve)
            return
        with open(pair.boxes, "rb") as boxes:
            check.check_file(pair.json, samples, resolve, boxes_name=pair.boxes, boxes=boxes)


def new_check(options: Options, progress: Progress | None, **fields) -> Check:
    workers = max(1, options.threads) if options.decode else 1
    return Check(workers=workers, progress=progress, contract=CONTRACTS[options.contract], **fields)


def check_pairs(
    pairs: list[Pair], options: Options, *, progress: Progress | None = None, processes: int | None = None
) -> Check:
    """Check every pair; several at once in `processes` worker processes (default: one per core, at most one per
    pair). One pair, or one process, is checked here, in this process."""
    processes = min(len(pairs), processes or usable_cores())
    if processes <= 1:
        check = new_check(options, progress)
        for pair in pairs:
            check_pair(check, pair, options)
        return check
    context = multiprocessing.get_context("spawn")
    counters = context.RawArray("q", 2 * len(pairs)) if progress else None
    with ProcessPoolExecutor(
        processes - 1, mp_context=context, initializer=_start_worker, initargs=(counters,)
    ) as pool:
        futures = [pool.submit(_check_in_worker, i, pair, options) for i, pair in enumerate(pairs) if i]
        first = new_check(options, _reporter(counters, 0, progress) if progress else None)
        check_pair(first, pairs[0], options)  # this process takes the first pair: one spawn fewer
        while progress and wait(futures, timeout=0.5).not_done:
            progress(sum(counters[0::2]), sum(counters[1::2]))
        checks = [first] + [f.result() for f in futures]  # the first failed file's error, in the given order
    merged = checks[0]
    for later in checks[1:]:
        merged.merge(later)
    if progress:
        progress(merged.samples, sum(f["referenced"] for f in merged.files))
    return merged


# ------------------------------------------------------------------------------------------------ in a worker

_counters = None  # the parent's shared (samples, images) slots, one pair per file, when it shows progress


def _start_worker(counters) -> None:
    global _counters
    _counters = counters
    ignore_bomb_warnings()


def _reporter(counters, index: int, show: Progress | None = None) -> Progress:
    """Progress into file `index`'s slots of the shared counters (and, in the parent, shown over every file)."""

    def report(samples: int, images: int) -> None:
        counters[2 * index], counters[2 * index + 1] = samples, images
        if show:
            show(sum(counters[0::2]), sum(counters[1::2]))

    return report


def _check_in_worker(index: int, pair: Pair, options: Options) -> Check:
    check = new_check(options, _reporter(_counters, index) if _counters is not None else None)
    check_pair(check, pair, options)
    check.progress = None  # a closure does not travel back to the parent
    return check
