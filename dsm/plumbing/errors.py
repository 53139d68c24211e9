"""Failures of Ray workers and actors as one line a user can read.

Ray wraps an exception raised in a worker in its own (``WorkerGroupError`` with a per-rank
``worker_failures`` map in Ray Train, ``ControllerError`` with ``controller_failure`` for one
raised in a Ray Train callback, ``RayTaskError`` with ``.cause`` elsewhere, Ray Data's
``UserCodeException`` raised from the UDF's error), whose text
is the whole remote traceback with colour codes. The cause the user needs is the innermost
exception: a dsm error (whose message names the file or key) or the worker's last
``...Error: ...`` line. No Ray import here: the wrappers are recognized by their attributes.
"""

from __future__ import annotations

import os
import re
import traceback
from pathlib import Path

_COLOUR = re.compile(r"\x1b\[[0-9;]*m|\[[0-9;]*m")
_ERROR_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b.*:")


class BadInputFailure(RuntimeError):
    """A worker failed on bad input (a corrupt shard, say), which fails the same way on every
    attempt, so the run stops rather than retrying. ``cause`` is the worker's one line,
    ``detail`` its traceback text."""

    def __init__(self, cause: str, detail: str = ""):
        super().__init__(f"{cause}\n(not retried: bad input fails the same way on every attempt)\n{detail}")
        self.cause, self.detail = cause, detail

    def __reduce__(self):
        return type(self), (self.cause, self.detail)


class JobFailed(RuntimeError):
    """A Ray job (training, a sweep, scoring) failed: ``cause`` is one line (the worker's own
    error), ``log`` the file with the full traceback, ``bad_input`` whether the input was at fault
    (exit status 2 rather than 1). Raised by dsm.runtime.driver.drive."""

    def __init__(self, cause: str, log: Path, bad_input: bool = False):
        super().__init__(cause)
        self.cause, self.log, self.bad_input = cause, Path(log), bad_input

    def __reduce__(self):
        return type(self), (self.cause, self.log, self.bad_input)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C of a Ray job; ``hint`` says how to resume it."""

    def __init__(self, hint: str):
        super().__init__(hint)
        self.hint = hint


def bad_input_among(errors: dict[int, BaseException]) -> BadInputFailure | None:
    """The first rank's bad-input error among per-rank worker errors, as a BadInputFailure; None
    when none is (a lost node, a collective torn down by another rank's death: those retry)."""
    for rank in sorted(errors):
        if is_bad_input(errors[rank]):
            detail = _COLOUR.sub("", "".join(traceback.format_exception(errors[rank])))
            return BadInputFailure(short_cause(errors[rank]), f"rank {rank}: {detail}")
    return None


def innermost(err: BaseException) -> BaseException:
    """The exception a worker actually raised, unwrapped from Ray's containers."""
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        controller = getattr(err, "controller_failure", None)  # Ray Train: raised in a callback
        if isinstance(controller, BaseException):
            err = controller
            continue
        failures = getattr(err, "worker_failures", None)
        if isinstance(failures, dict) and failures:
            err = failures[min(failures)]  # the lowest rank: rank 0 when it failed
            continue
        cause = getattr(err, "cause", None)
        if isinstance(cause, BaseException):
            err = cause
            continue
        # Ray Data's UserCodeException says only "UDF failed"; it is raised *from* the real error
        if type(err).__module__.startswith("ray.") and isinstance(err.__cause__, BaseException):
            err = err.__cause__
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
    line = _cause_line(err if type(inner).__module__.startswith("ray.") else inner)
    if line:
        return line[:limit]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if lines and not type(inner).__module__.startswith("ray.") and not isinstance(inner, _bad_input_types()):
        return f"{type(inner).__name__}: {lines[0]}"[:limit]  # an unexpected error: say what kind it was
    return lines[0][:limit] if lines else type(inner).__name__


def _cause_line(err: BaseException) -> str | None:
    """The last ``Type: message`` line of a remote traceback in ``err``'s text, Ray's own wrapper
    lines skipped (the object of the worker's exception does not always survive the trip: a
    ``raise ... from`` cause is not pickled, but Ray keeps its traceback as text)."""
    lines = [ln.strip() for ln in _COLOUR.sub("", str(err)).splitlines() if ln.strip()]
    causes = [ln for ln in lines if _ERROR_LINE.match(ln) and not ln.startswith("ray.")]
    return causes[-1] if causes else None


def is_bad_input(err: BaseException) -> bool:
    """True when the failure is dsm's bad-input kind (ValueError or FileNotFoundError, dsm's
    own subclasses included), raised here or in a worker (read from the remote traceback)."""
    inner = innermost(err)
    if isinstance(inner, (ValueError, FileNotFoundError)):
        return True
    line = _cause_line(err) if type(inner).__module__.startswith("ray.") else None
    return bool(line) and (
        re.match(r"^([\w.]*\.)?(ValueError|FileNotFoundError|ShardError|ConfigError)\b", line) is not None)


def write_traceback(err: BaseException, path: Path) -> Path:
    """The full traceback (Ray's remote one included, in its text) in ``path``; returns it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(traceback.format_exception(err)))
    return path


def print_failure(command: str, cause: str, log: Path) -> int:
    """Print a failure the way every dsm command does: where the full traceback is, then the
    cause (naming the file or key) as the last line; returns exit status 1."""
    import shlex
    import sys

    print(f"dsm {command}: failed; full traceback in {shlex.quote(str(log))}", file=sys.stderr)
    print(f"dsm {command}: {cause}", file=sys.stderr)
    return 1


def report_failure(command: str, err: BaseException, log: Path) -> int:
    """:func:`print_failure` of ``err``, its traceback written to ``log`` first."""
    return print_failure(command, short_cause(err), write_traceback(err, log))


def exit_interrupted(command: str, how_to_resume: str) -> None:
    """Ctrl-C of a long command: say how to resume, then exit 130 at once. Not through the
    interpreter's shutdown: a thread still blocked in Ray's client made it crash with SIGSEGV
    (seen in CI). The work done is on disk; a local Ray's own processes go with this one (and
    dsm's watchdog stops the agents that would not: dsm.runtime.cluster)."""
    import os
    import sys

    print(f"\ndsm {command}: interrupted; {how_to_resume}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def _bad_input_types() -> tuple[type[BaseException], ...]:
    """What a user's input can make dsm raise: dsm's own ConfigError and ShardError are
    ValueErrors; pickle.UnpicklingError comes from the restricted unpicklers of data sets."""
    import pickle

    return ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, pickle.UnpicklingError


def exit_code(command: str, run) -> int:
    """The one way an exception that escapes a dsm command becomes its exit status:
    - bad input (a config field, a file, an option): ``dsm COMMAND: message`` and 2;
    - a failed Ray job (:class:`JobFailed`): where its traceback is, then its cause; 2 when the
      input was at fault, else 1;
    - an exception with an ``exit_status`` attribute (a busy run folder, non-finite training):
      its message and that status;
    - Ctrl-C: 130, with how to resume a Ray job (:class:`Interrupted`);
    - anything else: the cause in one line, the traceback in a log file whose path is printed, 1.
    ``run()`` returns the command's own status otherwise."""
    import sys
    import tempfile

    try:
        return run()
    except _bad_input_types() as e:
        print(f"dsm {command}: {e}", file=sys.stderr)
        return 2
    except JobFailed as e:
        status = print_failure(command, e.cause, e.log)  # the cause last; the traceback in a file
        return 2 if e.bad_input else status
    except Interrupted as e:
        exit_interrupted(command, e.hint)
    except KeyboardInterrupt:
        print(f"\ndsm {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - Ray's and MLflow's failure types vary; the cause is what matters
        if isinstance(getattr(e, "exit_status", None), int):
            print(f"dsm {command}: {e}", file=sys.stderr)
            return e.exit_status
        fd, log = tempfile.mkstemp(prefix=f"dsm-{command.replace(' ', '-')}-", suffix=".log")
        os.close(fd)
        return report_failure(command, e, Path(log))
