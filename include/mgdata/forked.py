"""Run one function over a few items in forked child processes, one child per item, and gather their results.

Extract forks its per-core workers rather than spawning them: a forked child starts in milliseconds with every
module, the run, the catalog and the store already in place, where a spawned one would import Pillow, pyarrow and
pydantic again (about 0.85 s of CPU each) and would need all of it pickled. The children run no Python thread of
their parent, so each has an interpreter lock of its own: that is the point, since threads of one process sharing a
lock left a core partly idle however many there were.

- A child sends its result (or the exception it raised) back pickled through a pipe and leaves with `os._exit`:
  no `atexit` hook, no buffered output and no finalizer of the parent runs twice.
- The parent reads every pipe at once, so a child that dies without a result (a signal, the OOM killer) is seen
  as soon as it dies: the other children are killed and `WorkerDied` names the one that died and how.
- A child's exception is raised again in the parent once the other children have ended (killed, they could leave
  shared state held); their work is dropped.
- A child dies with its parent (Linux `PR_SET_PDEATHSIG`), so a task killed mid-extract leaves no worker writing
  behind it. The signal is sent when the thread that forked ends, and that thread is the one waiting here.

A child must only compute, read and write objects: whatever it changes in memory stays in the child.
"""

from __future__ import annotations

import os
import pickle
import selectors
import signal
import traceback
from collections.abc import Callable, Sequence
from typing import TypeVar

from mgdata.storage import libc_or_none

T = TypeVar("T")
R = TypeVar("R")

_PR_SET_PDEATHSIG = 1


class WorkerDied(RuntimeError):
    """A forked worker ended without handing back a result."""


def forked_map(
    fn: Callable[[T], R], items: Sequence[T], *, on_lost: Callable[[], object] | None = None
) -> list[R]:
    """`[fn(item) for item in items]`, each call in a child process of its own, all at once.

    `on_lost` is called once when a child ended abnormally (it died, or it was killed here because another died or
    the parent was interrupted): state a child shares with others, such as a semaphore in shared memory, may then
    be left held by a process that is gone."""
    parent = os.getpid()
    children: dict[int, tuple[int, int]] = {}  # read end of its pipe -> (index, pid)
    reaped: set[int] = set()
    lost = False
    try:
        for index, item in enumerate(items):
            read_end, write_end = os.pipe()
            try:
                pid = os.fork()
            except OSError:  # no process to be had (EAGAIN, ENOMEM): the children forked so far are stopped
                os.close(read_end)
                os.close(write_end)
                raise
            if pid == 0:  # the child: never returns
                os.close(read_end)
                _run_child(fn, item, write_end, parent)
            os.close(write_end)
            children[read_end] = (index, pid)
        return _gather(children, reaped)
    except WorkerDied:
        lost = True
        raise
    finally:
        for read_end, (_, pid) in children.items():
            if pid not in reaped:  # a reaped child's pid may already be another process's
                os.kill(pid, signal.SIGKILL)
                _reap(pid)
                lost = True
            os.close(read_end)
        if lost and on_lost is not None:
            on_lost()


def _run_child(fn: Callable, item: object, write_end: int, parent: int) -> None:
    code = 1
    try:
        libc = libc_or_none()
        if libc is not None and hasattr(libc, "prctl"):
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent was gone before the death signal was asked for
            os._exit(1)
        try:
            outcome = ("ok", fn(item))
        except (
            BaseException
        ) as e:  # handed to the parent, which raises it with the child's traceback as a note
            e.add_note(f"in forked worker process {os.getpid()}:\n{traceback.format_exc().rstrip()}")
            outcome = ("error", e)
        try:
            payload = pickle.dumps(outcome, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as e:
            # a result or an exception that cannot be pickled: its type and message still reach the parent
            shown = outcome[1] if outcome[0] == "error" else e
            payload = pickle.dumps(("error", RuntimeError(f"{type(shown).__name__}: {shown}")))
        with os.fdopen(write_end, "wb") as out:
            out.write(payload)
        code = 0
    finally:
        os._exit(code)


def _gather(children: dict[int, tuple[int, int]], reaped: set[int]) -> list:
    """Every child's result in item order. A child's exception is raised once the others have ended (they may hold
    shared state; their work is dropped); a child that died raises `WorkerDied` at once."""
    results: list = [None] * len(children)
    received: dict[int, list[bytes]] = {fd: [] for fd in children}
    first_error: BaseException | None = None
    with selectors.DefaultSelector() as selector:
        for fd in children:
            selector.register(fd, selectors.EVENT_READ)
        open_pipes = len(children)
        while open_pipes:
            for key, _ in selector.select():
                chunk = os.read(key.fd, 1 << 20)
                if chunk:
                    received[key.fd].append(chunk)
                    continue
                selector.unregister(key.fd)
                open_pipes -= 1
                index, pid = children[key.fd]
                status = _reap(pid)
                reaped.add(pid)
                payload = b"".join(received.pop(key.fd))
                worker = f"worker {index + 1} of {len(children)}"
                if not payload or status is None or not os.WIFEXITED(status) or os.WEXITSTATUS(status):
                    # nothing, or half a result: the child died before it finished writing
                    raise WorkerDied(f"{worker} {_ended(status)}")
                try:
                    kind, value = pickle.loads(payload)
                except Exception as e:
                    raise WorkerDied(f"{worker} handed back a result that cannot be read: {e}") from None
                if kind == "error":
                    first_error = first_error or value
                else:
                    results[index] = value
    if first_error is not None:
        raise first_error
    return results


def _reap(pid: int) -> int | None:
    """The child's wait status; None if it was already reaped."""
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return None


def _ended(status: int | None) -> str:
    if status is not None and os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"was killed by signal {sig} ({signal.Signals(sig).name}) before it handed back its result"
    if status is not None and os.WIFEXITED(status):
        return f"exited with status {os.WEXITSTATUS(status)} before it handed back its result"
    return "ended before it handed back its result"
