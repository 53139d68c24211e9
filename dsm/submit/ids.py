"""Deterministic submission ids: the same command is the same job.

``dsm-<subcommand>-<12 hex>``, the hash taken over the normalized argv (file arguments
rewritten relative to the uploaded working_dir), the contents of those files, and the
workspace the job writes to. Ray refuses a second job with an existing id, and never reuses
one, so attempts after the first get a suffix: ``<id>-r1``, ``<id>-r2``, ...

What :func:`decide` does with an existing chain of attempts (its latest attempt counts):

- none yet: submit ``<id>``;
- PENDING or RUNNING: attach to it (no second copy of the same training);
- SUCCEEDED: attach to it (report its result) unless ``rerun``, then submit the next attempt;
- FAILED or STOPPED: submit the next attempt. A re-submitted ``dsm train`` resumes from its
  last checkpoint, because its run name (``<config stem>-<hash>``) is deterministic too.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping

PREFIX = "dsm"
ACTIVE = ("PENDING", "RUNNING")
_ATTEMPT = re.compile(r"-r([1-9][0-9]*)$")


def submission_base(argv: list[str], file_digests: Mapping[str, str] | None = None,
                    workspace: str | None = None) -> str:
    """``dsm-<subcommand>-<hash>`` of the normalized argv (without the leading ``dsm``),
    ``{file argument: sha256 of its contents}`` and the job's workspace."""
    if not argv:
        raise ValueError("empty dsm command")
    blob = json.dumps({"argv": list(argv), "files": dict(sorted((file_digests or {}).items())),
                       "workspace": workspace}, sort_keys=True)
    sub = re.sub(r"[^a-z0-9]+", "-", argv[0].lower()).strip("-") or "cmd"
    return f"{PREFIX}-{sub}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def attempt_of(base: str, submission_id: str) -> int | None:
    """0 for ``base``, n for ``base-rn``, None for an unrelated id."""
    if submission_id == base:
        return 0
    if submission_id.startswith(base):
        m = _ATTEMPT.fullmatch(submission_id[len(base):])
        if m:
            return int(m.group(1))
    return None


def attempt_id(base: str, n: int) -> str:
    return base if n == 0 else f"{base}-r{n}"


def decide(base: str, statuses: Mapping[str, str], rerun: bool = False) -> tuple[str, str]:
    """``("submit" | "attach", submission_id)`` given ``{submission id: status}`` of the
    cluster's jobs (unrelated ids are ignored)."""
    attempts = {n: str(s) for sid, s in statuses.items() if (n := attempt_of(base, sid)) is not None}
    if not attempts:
        return "submit", base
    last = max(attempts)
    status = attempts[last]
    if status in ACTIVE or (status == "SUCCEEDED" and not rerun):
        return "attach", attempt_id(base, last)
    return "submit", attempt_id(base, last + 1)
