"""``SGPOTrainer``: TRL's ``GRPOTrainer`` with the SGPO reward step (and optionally the fused loss).

How the SGPO credit reaches TRL's advantages. TRL 1.16 turns the ``(N, K)`` rewards of its K
reward functions into one reward per row, ``R_i = nansum_k(w_k * r_ik)`` (``reward_weights``;
NaN when every function returned None), and group-normalises ``R``. ``SGPOTrainer`` appends one
column to the rewards that ``_calculate_rewards`` returns, with weight 1 (``reward_weights`` is
extended by one entry): ``credit_scale * f(c_i)`` on the rows of diversified groups (``f`` the
credit rule, ``sgpo_rs.credit``), NaN elsewhere
(``nansum`` skips it, and an unscorable row stays unscorable). So the reward TRL normalises is
exactly ``sgpo_rs.sgpo_rewards(R, ...).rewards`` (up to float32 rounding): the credit is added to
the final weighted sum, whatever the weights; it is never scaled by the correctness function's
weight. TRL's per-function logs (``rewards/<name>/mean``) stay the raw outcome rewards and its
``reward`` log is the SGPO reward. ``multi_objective_aggregation="normalize_then_sum"`` is
rejected: it normalises each function separately, so there is no summed reward to credit.

Correctness: ``correctness_func`` (called like a TRL reward function on this process's rows,
returning truthy values), else the reward function named by ``sgpo_correctness_reward`` (its raw,
unweighted value ``> sgpo_correctness_threshold``), else the only reward function.

Distributed judging. ``_calculate_rewards`` returns the rewards of the *global* generation batch
(gathered); process ``p`` owns rows ``[p * n, (p + 1) * n)``. Every process computes the same global
decision (which rows need a verdict: the scorable rows of all-negative groups, or every scorable
incorrect row in mode ``"all_incorrect"``), judges only its own rows among them in one call, and
the ``(first_error, num_steps)`` pairs are gathered, so each row is judged exactly once even when
a group straddles processes. Every process then applies ``sgpo_rewards`` to the same global arrays.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from trl import GRPOTrainer

from ..credit import CreditOptions, length_scores
from ..judge.verdict import NO_VERDICT
from ..rewards import SGPORewards, sgpo_rewards
from . import loss as _loss
from .compat import check_private_api
from .config import SGPOConfig
from .judging import as_judge_fn, completion_text, judge_name, prompt_text, run_judge

_DEFAULTS = {
    name: SGPOConfig.__dataclass_fields__[name].default
    for name in (
        "sgpo_credit_scale",
        "sgpo_rule",
        "sgpo_beta",
        "sgpo_gamma",
        "sgpo_preset",
        "sgpo_credit_unit",
        "sgpo_mode",
        "sgpo_correctness_reward",
        "sgpo_correctness_threshold",
        "sgpo_judge_timeout_s",
        "sgpo_problem_column",
        "sgpo_reference_column",
        "use_sgpo_loss",
    )
}


class SGPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose all-wrong groups get step-wise credit from a judge (SGPO).

    ``SGPOTrainer(model, reward_funcs, args=SGPOConfig(...), train_dataset=..., judge=judge)``:
    every argument of ``GRPOTrainer`` plus

    - ``judge``: a :class:`sgpo_rs.judge.StepJudge` (``RuleJudge``, ``CriticJudge``,
      ``CachedJudge(...)``, ...) or a callable ``fn(problems, responses, rows)`` returning one
      ``(first_error, num_steps)`` (or ``Verdict``) per response; ``problems``/``responses`` are
      texts, ``rows`` the dataset rows (dicts). Required.
    - ``correctness_func``: optional ``fn(prompts, completions, completion_ids, **columns)`` (a TRL
      reward function's signature) returning one truthy/falsy value per completion.

    ``args`` is an :class:`SGPOConfig` (a plain ``GRPOConfig`` gets the SGPO defaults). SGPO
    applies in training; evaluation batches keep their plain GRPO rewards (no judge calls).

    After each training batch, ``last_sgpo`` holds the :class:`sgpo_rs.SGPORewards` of the global
    batch and ``last_sgpo_judged_rows`` the number of rows this process judged. The metrics
    ``sgpo/all_negative_frac``, ``sgpo/diversified_frac``, ``sgpo/judge_missing_frac`` and
    ``sgpo/mean_credit`` are logged with TRL's. A judge that raises, times out
    (``sgpo_judge_timeout_s``) or returns invalid verdicts never stops training: its rows get no
    verdict, their groups stay plain GRPO (counted in ``sgpo/judge_missing_frac``), and one warning
    is issued for the step.
    """

    def __init__(
        self,
        *args: Any,
        judge: Any = None,
        correctness_func: Optional[Callable[..., List[Any]]] = None,
        **kwargs: Any,
    ) -> None:
        import trl

        check_private_api(GRPOTrainer, trl.__version__)
        if judge is None:
            raise TypeError(
                "SGPOTrainer: judge is required (a sgpo_rs.judge.StepJudge such as RuleJudge(), or a "
                "callable (problems, responses, rows) -> [(first_error, num_steps), ...])"
            )
        as_judge_fn(judge)  # refuse what is no judge before loading anything
        self.judge = judge
        if correctness_func is not None and not callable(correctness_func):
            raise TypeError(f"correctness_func: expected a callable, got {type(correctness_func).__name__}")
        self.correctness_func = correctness_func
        super().__init__(*args, **kwargs)

        self._sgpo: Dict[str, Any] = {name: getattr(self.args, name, v) for name, v in _DEFAULTS.items()}
        self._sgpo_judge_fn = as_judge_fn(judge, self._sgpo["sgpo_reference_column"])
        self._check_dataset_columns()
        # A plain GRPOConfig has none of the credit fields: resolve them as SGPOConfig does.
        self._sgpo_credit = CreditOptions.resolve(
            self._sgpo["sgpo_preset"],
            credit_scale=self._sgpo["sgpo_credit_scale"],
            rule=self._sgpo["sgpo_rule"],
            beta=self._sgpo["sgpo_beta"],
            gamma=self._sgpo["sgpo_gamma"],
            prefix="sgpo_",
        )
        if self.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                f"multi_objective_aggregation={self.multi_objective_aggregation!r}: SGPO credits the summed "
                f"reward of each response, which only 'sum_then_normalize' has"
            )
        self._sgpo_num_outcome = len(self.reward_weights)
        self._sgpo_correctness_column = self._correctness_column()
        if self._sgpo["use_sgpo_loss"]:
            problems = _loss.unsupported_options(self)
            if problems:
                raise ValueError(
                    "use_sgpo_loss=True: sgpo_rs.torch.sgpo_loss does not implement " + ", ".join(problems)
                )
        # The SGPO credit column (see the module docstring) enters TRL's weighted sum with weight 1.
        self.reward_weights = torch.cat([self.reward_weights, torch.ones(1, dtype=self.reward_weights.dtype)])
        self.last_sgpo: Optional[SGPORewards] = None
        self.last_sgpo_judged_rows = 0

    def _correctness_column(self) -> Optional[int]:
        name = self._sgpo["sgpo_correctness_reward"]
        if self.correctness_func is not None:
            if name is not None:
                raise ValueError("give either correctness_func or sgpo_correctness_reward, not both")
            return None
        if name is None:
            if len(self.reward_func_names) == 1:
                return 0
            raise ValueError(
                f"SGPOTrainer: with {len(self.reward_func_names)} reward functions "
                f"({', '.join(self.reward_func_names)}), set sgpo_correctness_reward to the one that says "
                f"whether an answer is correct, or pass correctness_func"
            )
        if name not in self.reward_func_names:
            raise ValueError(
                f"sgpo_correctness_reward={name!r} is not one of the reward functions: "
                f"{', '.join(self.reward_func_names)}"
            )
        return self.reward_func_names.index(name)

    def _check_dataset_columns(self) -> None:
        """The columns SGPO reads exist in the train dataset (a typo fails here, not at the first
        judging step after generation)."""
        columns = getattr(self.train_dataset, "column_names", None)
        if columns is None:  # an iterable dataset without a schema: checked when rows arrive
            return
        for option in ("sgpo_problem_column", "sgpo_reference_column"):
            name = self._sgpo[option]
            if name is not None and name not in columns:
                raise ValueError(
                    f"{option}={name!r}: the train dataset has no such column (columns: {', '.join(columns)})"
                )

    # --- the reward step ------------------------------------------------------------------------

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        device = rewards_per_func.device
        credit_column = torch.full((rewards_per_func.shape[0], 1), float("nan"), device=device)
        if self.model.training:
            sgpo = self._sgpo_rewards(rewards_per_func, inputs, prompts, completions, completion_ids_list)
            diversified = torch.as_tensor(sgpo.diversified, device=device)
            bonus = torch.as_tensor(self._sgpo_credit.bonus(sgpo.credit), dtype=torch.float32, device=device)
            credit_column[diversified, 0] = bonus[diversified]
        return torch.cat([rewards_per_func, credit_column], dim=1)

    def _correct(self, rewards_per_func, inputs, prompts, completions, completion_ids_list) -> np.ndarray:
        """Global correctness, one bool per row of the gathered batch."""
        if self.correctness_func is None:
            column = rewards_per_func[:, self._sgpo_correctness_column]
            return (column > self._sgpo["sgpo_correctness_threshold"]).cpu().numpy()
        keys = [key for key in inputs[0] if key not in ("prompt", "completion", "completion_ids")]
        columns = {key: [example[key] for example in inputs] for key in keys}
        values = self.correctness_func(
            prompts=prompts,
            completions=completions,
            completion_ids=completion_ids_list,
            trainer_state=self.state,
            **columns,
        )
        values = list(values)
        if len(values) != len(prompts):
            raise ValueError(
                f"correctness_func returned {len(values)} values for {len(prompts)} completions "
                f"(one expected per completion)"
            )
        local = torch.tensor([1.0 if v else 0.0 for v in values], device=rewards_per_func.device)
        return (self.accelerator.gather(local) > 0.5).cpu().numpy()

    def _rows_to_judge(self, rewards: np.ndarray, correct: np.ndarray, group_size: int) -> np.ndarray:
        """The global rows that need a verdict for ``sgpo_rewards`` to credit them."""
        scorable = ~np.isnan(rewards)
        wrong = scorable & ~correct
        if self._sgpo["sgpo_mode"] == "all_incorrect":
            return wrong
        any_correct = (scorable & correct).reshape(-1, group_size).any(axis=1)
        return wrong & np.repeat(~any_correct, group_size)

    def _sgpo_rewards(
        self, rewards_per_func, inputs, prompts, completions, completion_ids_list
    ) -> SGPORewards:
        device = rewards_per_func.device
        group_size = self.num_generations
        # TRL's per-row reward: weighted nansum, NaN when every reward function returned None.
        weights = self.reward_weights[: self._sgpo_num_outcome].to(device)
        total = (rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
        total[torch.isnan(rewards_per_func).all(dim=1)] = float("nan")
        rewards = total.cpu().numpy()
        correct = self._correct(rewards_per_func, inputs, prompts, completions, completion_ids_list)
        todo = self._rows_to_judge(rewards, correct, group_size)

        n = len(prompts)
        start = self.accelerator.process_index * n
        local_rows = np.flatnonzero(todo[start : start + n])
        local = np.zeros((n, 2), dtype=np.int64)
        local[:, 0] = NO_VERDICT
        # Length-based scores (sgpo_credit_unit="length"), NaN where there is no verdict.
        local_scores = np.full(n, np.nan)
        if local_rows.size:
            column = self._sgpo["sgpo_problem_column"]
            problems = [
                str(inputs[i][column]) if column is not None else prompt_text(prompts[i]) for i in local_rows
            ]
            responses = [completion_text(completions[i]) for i in local_rows]
            rows = [inputs[i] for i in local_rows]
            first_error, num_steps, failure = run_judge(
                self._sgpo_judge_fn, problems, responses, rows, self._sgpo["sgpo_judge_timeout_s"]
            )
            local[local_rows, 0] = first_error
            local[local_rows, 1] = num_steps
            if self._sgpo["sgpo_credit_unit"] == "length":
                delimiter = getattr(self.judge, "delimiter", "\n\n")
                scores = length_scores(responses, first_error, delimiter=delimiter, strict=False)
                mismatched = int(np.sum(np.isnan(scores) & (first_error != NO_VERDICT)))
                if mismatched:
                    failure = (failure + "; " if failure else "") + (
                        f"{mismatched} verdicts name a step the response does not have when split with "
                        f"{delimiter!r} (sgpo_credit_unit='length'); those rows are treated as not judged"
                    )
                local_scores[local_rows] = scores
            if failure is not None:
                warnings.warn(
                    f"SGPO (step {self.state.global_step}, process {self.accelerator.process_index}): "
                    f"judge {judge_name(self.judge)}: {failure}; their groups stay plain GRPO this step",
                    RuntimeWarning,
                    stacklevel=2,
                )
        self.last_sgpo_judged_rows = int(local_rows.size)
        verdicts = self.accelerator.gather(torch.as_tensor(local, device=device)).cpu().numpy()
        if self._sgpo["sgpo_credit_unit"] == "length":
            scores = self.accelerator.gather(torch.as_tensor(local_scores, device=device)).cpu().numpy()
            judged = dict(credit=scores)
        else:
            judged = dict(first_error=verdicts[:, 0], num_steps=verdicts[:, 1])
        out = sgpo_rewards(
            rewards,
            **judged,
            group_size=group_size,
            correct=correct,
            mode=self._sgpo["sgpo_mode"],
            credit_scale=self._sgpo_credit.credit_scale,
            **self._sgpo_credit.rule_kwargs(),
        )
        self.last_sgpo = out
        for key, value in out.metrics().items():
            self._metrics["train"][key].append(value)
        return out

    # --- the loss step --------------------------------------------------------------------------

    def _compute_loss(self, model, inputs):
        if not self._sgpo["use_sgpo_loss"]:
            return super()._compute_loss(model, inputs)
        return _loss.compute_loss(self, model, inputs)
