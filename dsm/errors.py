"""Failures of Ray workers and actors as one line a user can read.

Ray wraps an exception raised in a worker in its own (``WorkerGroupError`` with a per-rank
``worker_failures`` map in Ray Train, ``RayTaskError`` with ``.cause`` elsewhere), whose text
is the whole remote traceback with colour codes. The cause the user needs is the innermost
exception: a dsm error (whose message names the file or key) or the worker's last
``...Error: ...`` line. No Ray import here: the wrappers are recognized by their attributes.
"""

from __future__ import annotations

import re
import traceback
from pathlib import Path

_COLOUR = re.compile(r"\x1b\[[0-9;]*m|\[[0-9;]*m")
_ERROR_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b.*:")


def innermost(err: BaseException) -> BaseException:
    """The exception a worker actually raised, unwrapped from Ray's containers."""
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        failures = getattr(err, "worker_failures", None)
        if isinstance(failures, dict) and failures:
            err = failures[min(failures)]  # the lowest rank: rank 0 when it failed
            continue
        cause = getattr(err, "cause", None)
        if isinstance(cause, BaseException):
            err = cause
            continue
        break
    return err


def short_cause(err: BaseException, limit: int = 300) -> str:
    """One line: ``Type: message`` of the innermost exception (a dsm error's own message), at
    most ``limit`` characters."""
    inner = innermost(err)
    text = _COLOUR.sub("", str(inner)).strip()
    if type(inner).__module__.startswith("dsm.") and text:
        return text.splitlines()[0][:limit]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    causes = [ln for ln in lines if _ERROR_LINE.match(ln)]
    if causes:
        return causes[-1][:limit]
    if inner is not err and lines:  # a worker's own exception object: say what kind it was
        return f"{type(inner).__name__}: {lines[0]}"[:limit]
    return lines[0][:limit] if lines else type(inner).__name__


def write_traceback(err: BaseException, path: Path) -> Path:
    """The full traceback (Ray's remote one included, in its text) in ``path``; returns it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(traceback.format_exception(err)))
    return path
