"""Multi-output sessions in verl's v1 trainer (an agent loop that returns several outputs per
sampled trajectory, e.g. one per turn): SGPO groups them as verl's GRPO does.

verl's v1 advantage step keys each output ``{uid}_{session}_{index}``. For ``grpo`` it normalises
over the *final* output of each session and broadcasts that advantage to the session's other
outputs; any other estimator name gets every output as a separate group member, so a session of
three outputs would count three times in its group's mean and std. For ``sgpo`` we do what verl does
for ``grpo``: the final outputs, with their verdicts, form the groups; the result is broadcast."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, List, Tuple

import numpy as np

from . import verdicts

_MARK = "_sgpo_rs_wrapped"


def final_outputs(batch_keys: List[str]) -> Tuple[np.ndarray, np.ndarray]:
    """(row of each session's last output, in first-seen session order; for every row, the
    position of its session's last output in that list)."""
    last: dict = {}
    sessions = []
    for row, key in enumerate(batch_keys):
        uid_session, sep, index = str(key).rpartition("_")
        if not sep or "_" not in uid_session or not index.lstrip("-").isdigit():
            raise ValueError(f"batch_keys: expected '{{uid}}_{{session}}_{{index}}', got {key!r}")
        sessions.append(uid_session)
        seen = last.get(uid_session)
        if seen is None or seen[0] < int(index):
            last[uid_session] = (int(index), row)
    position = {session: i for i, session in enumerate(last)}
    finals = np.array([row for _, row in last.values()], dtype=np.int64)
    return finals, np.array([position[s] for s in sessions], dtype=np.int64)


def wrap_multi_trajectories(
    original: Callable[..., Any], is_sgpo: Callable[[Any], bool]
) -> Callable[..., Any]:
    """verl's ``compute_advantage_for_multi_trajectories`` with ``sgpo`` grouped by final outputs."""
    if getattr(original, _MARK, False):
        return original

    @functools.wraps(original)
    def compute_advantage_for_multi_trajectories(
        data: Any, batch_keys: List[str], adv_estimator: Any, *args: Any, **kwargs: Any
    ) -> Any:
        if not is_sgpo(adv_estimator):
            return original(data, batch_keys, adv_estimator, *args, **kwargs)
        finals, row_to_final = final_outputs(batch_keys)
        if len(finals) == len(batch_keys):  # one output per session: nothing to regroup
            return original(data, batch_keys, adv_estimator, *args, **kwargs)
        import torch

        compute_advantage = sys.modules[original.__module__].compute_advantage
        pending = verdicts.current()
        final_verdicts = None if pending is None else pending.select(finals)
        with verdicts.pending(final_verdicts):
            final = compute_advantage(data.select_idxs(finals), adv_estimator, *args, **kwargs)
        if final_verdicts is not None:
            pending.metrics.update(final_verdicts.metrics)
        # A row's advantage is constant over its tokens: read it at the first response token.
        first_token = final.batch["response_mask"].argmax(dim=1)
        per_session = final.batch["advantages"][torch.arange(len(finals)), first_token]
        advantages = per_session[torch.from_numpy(row_to_final)].unsqueeze(-1) * data.batch["response_mask"]
        data.batch["advantages"] = advantages
        data.batch["returns"] = advantages
        return data

    setattr(compute_advantage_for_multi_trajectories, _MARK, True)
    return compute_advantage_for_multi_trajectories
