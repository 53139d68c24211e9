"""Atomic file writes: a file exists whole under its final name, or not at all."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temporary file is in the same folder (a rename across file systems is not atomic)
    and is removed when the body raises, so a crash never leaves half a file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_torch_file(path: str | Path, what: str, map_location: str | object = "cpu", mmap: bool = False) -> object:
    """``torch.load(path, weights_only=True)`` with every failure as a one-line ValueError that
    names the file and says, in dsm's words, what is wrong with it.

    weights_only unpickles tensors, numbers, strings and plain containers and nothing else, so a
    file that would import code when read (a pickled ``__reduce__`` naming ``os.system``, say) is
    refused instead of run. torch's own message for that case recommends re-running with
    ``weights_only=False``, the unsafe option, so it is never passed on to the user.
    what: the kind of file expected, e.g. "dsm model" or "dsm training checkpoint". mmap: map the
    tensors instead of reading them (to look at a large file's small entries).
    """
    import pickle
    import warnings

    import torch

    path = Path(path)
    try:
        with warnings.catch_warnings():  # a random file's "pickle protocol 147" warning would precede our line
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError:
        names = _code_named_in(path)
        if names:
            raise ValueError(f"{path}: not a trusted {what}: reading it would import "
                             f"{', '.join(names[:3])}{' ...' if len(names) > 3 else ''}, and dsm never runs "
                             f"code from a file") from None
        raise ValueError(f"{path}: not a {what} (not a file written by torch.save)") from None
    except (EOFError, RuntimeError, OSError) as e:
        cause = "empty" if isinstance(e, EOFError) else str(e).split(". ")[0]
        raise ValueError(f"{path}: not a readable {what} ({cause})") from None
    except Exception as e:  # noqa: BLE001 - arbitrary bytes break torch's unpickler in arbitrary ways
        raise ValueError(f"{path}: not a {what} (its pickle is malformed: {type(e).__name__})") from None


def _code_named_in(path: Path) -> list[str]:
    """The importable names (module.attribute) a torch.save file's pickle refers to beyond what
    weights_only allows; [] when the file is not a torch.save archive at all."""
    import torch

    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except (ValueError, RuntimeError, OSError):
        return []


class Busy(RuntimeError):
    """Another process holds the lock; the message names it (pid, host, since when)."""

    exit_status = 2  # dsm.plumbing.errors.exit_code: the user asked for something in use


@contextmanager
def exclusive(folder: str | Path, what: str, *, wait: bool = False, name: str = ".dsm.lock") -> Iterator[None]:
    """Hold the lock file ``folder/name`` for the body: one dsm process at a time trains into a run folder
    or prepares a data folder. wait=False raises :class:`Busy` naming the holder at once; wait=True
    blocks until the holder is done (preparing data: the second command then finds it ready).

    filelock's OS-level locks (fcntl) are released by the kernel when the holder dies, so a
    killed run never leaves a stale lock; the owner file only says who holds it.
    """
    import json
    import socket
    import time

    from filelock import FileLock, Timeout

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lock, owner = FileLock(folder / name), folder / f"{name}.owner"
    try:
        lock.acquire(timeout=-1 if wait else 0)
    except Timeout:
        try:
            who = json.loads(owner.read_text())
            holder = f"pid {who['pid']} on {who['host']}, since {who['since']}"
        except (OSError, ValueError, KeyError):
            holder = "another process"
        raise Busy(f"{folder}: {what} is in use by {holder}; wait for it to finish, or use another name") from None
    try:
        owner.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """The SHA-256 of a local file's bytes, hex (read in ``chunk``-byte blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
