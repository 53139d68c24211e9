"""How many trials train at once: a small named actor that hands out training slots.

Why not Tune's ``max_concurrent_trials`` alone: it limits how many *new* trials the search
algorithm proposes, but a restored sweep starts all its unfinished trials at once. Each
trial's Ray Train workers then compete for the same CPUs, and when the trial functions
themselves hold CPUs, no worker group can start (seen on 2 CPUs: two restored trials
holding 0.2 CPU each leave 1.6 for groups needing 1.8, and both time out). So trial
functions reserve no CPU (a little memory only), and each one takes a slot here before it
builds its trainer. Slots of trials that died without returning theirs (a trial ASHA
stopped, a crashed actor) are taken back by asking Ray's State API whether the holder lives.
"""

from __future__ import annotations

import time

import ray


@ray.remote(num_cpus=0)
class TrainingSlots:
    """``n`` slots, held by trial name; the holder's actor id is kept to reclaim dead ones."""

    def __init__(self, n: int):
        self.n = n
        self.holders: dict[str, str] = {}

    def acquire(self, trial: str, actor_id: str) -> bool:
        if trial in self.holders or len(self.holders) < self.n or self._reclaim():
            self.holders[trial] = actor_id
            return True
        return False

    def release(self, trial: str) -> None:
        self.holders.pop(trial, None)

    def held(self) -> list[str]:
        return sorted(self.holders)

    def _reclaim(self) -> bool:
        from ray.util.state import get_actor

        for trial, actor_id in list(self.holders.items()):
            try:
                state = get_actor(actor_id, timeout=10)
            except Exception:  # noqa: BLE001 - State API unreachable: keep the slot (never over-admit)
                continue
            if state is None or state.state == "DEAD":
                del self.holders[trial]
        return len(self.holders) < self.n


def slots_name(sweep: str) -> str:
    return f"dsm-sweep-slots-{sweep}"


def create(sweep: str, n: int):
    """The sweep's slot actor (owned by the driver: it goes away with it)."""
    return TrainingSlots.options(name=slots_name(sweep), get_if_exists=True).remote(n)


def wait_for_slot(sweep: str, trial: str, poll_s: float = 1.0) -> None:
    """Block this trial until it holds one of the sweep's training slots."""
    slots = ray.get_actor(slots_name(sweep))
    me = ray.get_runtime_context().get_actor_id()
    while not ray.get(slots.acquire.remote(trial, me)):
        time.sleep(poll_s)


def release(sweep: str, trial: str) -> None:
    try:
        ray.get(ray.get_actor(slots_name(sweep)).release.remote(trial))
    except Exception:  # noqa: BLE001 - the driver (and its actor) may be gone; nothing to return then
        pass
