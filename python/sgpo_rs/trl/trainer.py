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

import inspect
import warnings
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from trl import GRPOTrainer

from ..credit import CreditOptions, length_scores, token_length_scores, tokenizer_offsets
from ..judge.calling import FailureStreak
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
        "sgpo_judge_preflight",
        "sgpo_judge_max_failed_steps",
        "use_sgpo_loss",
    )
}


PREFLIGHT_RESPONSE = "1 + 1 = 2\n\nSo the answer is 2."
"""The trivial response the preflight call judges (two steps, both right)."""


def _check_dataset_columns(dataset: Any, options: Dict[str, Any]) -> None:
    """The columns SGPO reads exist in the train dataset (a typo fails at construction, not at the
    first judging step after generation)."""
    columns = getattr(dataset, "column_names", None)
    if columns is None:  # no dataset, or an iterable one without a schema
        return
    for option in ("sgpo_problem_column", "sgpo_reference_column"):
        name = options[option]
        if name is not None and name not in columns:
            raise ValueError(
                f"{option}={name!r}: the train dataset has no such column (columns: {', '.join(columns)})"
            )


def _preflight(judge: Any, judge_fn: Any, dataset: Any, options: Dict[str, Any]) -> None:
    """One judge call on a trivial response for the first rows of the dataset. A judge that fails
    on all of them (a dead server, a checker that raises, verdicts of the wrong shape) raises here
    with its own error, before the model is loaded onto devices."""
    try:
        count = min(2, len(dataset))
        rows = [dict(dataset[i]) for i in range(count)]
    except Exception:  # noqa: BLE001 - no dataset, or one without random access: nothing to try
        return
    if not rows:
        return
    column = options["sgpo_problem_column"]
    problems = [
        str(row[column]) if column is not None else prompt_text(row.get("prompt", "")) for row in rows
    ]
    timeout = options["sgpo_judge_timeout_s"]
    outcome = run_judge(judge_fn, problems, [PREFLIGHT_RESPONSE] * len(rows), rows, timeout)
    if outcome.all_failed:
        raise RuntimeError(
            f"SGPOTrainer: the judge {judge_name(judge)} failed before training, on a trivial response to "
            f"{len(rows)} dataset rows: {outcome.message}. Fix the judge (or its server), or set "
            f"sgpo_judge_preflight=False to skip this check"
        ) from outcome.exception


class SGPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` whose all-wrong groups get step-wise credit from a judge (SGPO).

    ``SGPOTrainer(model, reward_funcs, args=SGPOConfig(...), train_dataset=..., judge=judge)``:
    every argument of ``GRPOTrainer`` plus

    - ``judge``: a :class:`sgpo_rs.judge.StepJudge` (``RuleJudge``, ``CriticJudge``,
      ``CachedJudge(...)``, ...) or a callable ``fn(problems, responses, rows)`` returning one
      ``(first_error, num_steps)`` (or ``Verdict``) per response; ``problems``/``responses`` are
      texts, ``rows`` the dataset rows (dicts). Required.
    - ``correctness_func``: optional ``fn(prompts, completions, completion_ids, **columns)`` (a TRL
      reward function's signature) returning one truthy/falsy value per completion (None: unknown).

    ``args`` is an :class:`SGPOConfig` (a plain ``GRPOConfig`` gets the SGPO defaults). SGPO
    applies in training; evaluation batches keep their plain GRPO rewards (no judge calls).

    After each training batch, ``last_sgpo`` holds the :class:`sgpo_rs.SGPORewards` of the global
    batch, ``last_sgpo_judged_rows`` the number of rows this process judged and
    ``last_sgpo_failed_rows`` how many of those the judge failed on. The ``sgpo/*`` metrics
    (:meth:`sgpo_rs.SGPORewards.metrics`, plus ``sgpo/correctness_unknown_frac``) are logged with
    TRL's. A broken judge is loud: a class or a per-response function passed as ``judge`` is
    refused, the judge is called once on a trivial response before the model is prepared
    (``sgpo_judge_preflight``), a judging step whose calls fail warns with the counts and the first
    error (their groups stay plain GRPO), and ``sgpo_judge_max_failed_steps`` consecutive judging
    steps without any verdict stop training with the judge's last error.
    """

    # The model card TRL writes names SGPO (and still the GRPO it builds on).
    _tag_names = ["trl", "grpo", "sgpo", "sgpo-rs"]
    _name = "SGPO"
    _paper = {
        "title": "Stepwise Guided Policy Optimization",
        "id": "2505.11595",
        "citation": (
            "@misc{sgpo2025,\n"
            "    title        = {{Stepwise Guided Policy Optimization}},\n"
            "    year         = 2025,\n"
            "    eprint       = {2505.11595},\n"
            "    archivePrefix = {arXiv},\n"
            "}"
        ),
    }

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
        if correctness_func is not None and not callable(correctness_func):
            raise TypeError(f"correctness_func: expected a callable, got {type(correctness_func).__name__}")
        # Everything about the judge is checked before TRL loads and prepares the model: the judge's
        # type and signature, the dataset columns it reads, and (unless turned off) one call.
        # The SGPO options come from the args as given (TRL's default GRPOConfig, made when args is
        # None, has none of them: the defaults then, as here).
        bound = inspect.signature(GRPOTrainer.__init__).bind_partial(None, *args, **kwargs).arguments
        sgpo = {name: getattr(bound.get("args"), name, v) for name, v in _DEFAULTS.items()}
        judge_fn = as_judge_fn(judge, sgpo["sgpo_reference_column"])
        _check_dataset_columns(bound.get("train_dataset"), sgpo)
        if sgpo["sgpo_judge_preflight"]:
            _preflight(judge, judge_fn, bound.get("train_dataset"), sgpo)
        self.judge = judge
        self.correctness_func = correctness_func
        super().__init__(*args, **kwargs)

        self._sgpo: Dict[str, Any] = sgpo
        self._sgpo_judge_fn = judge_fn
        self._sgpo_failed_steps = FailureStreak()
        self._sgpo_warned_unknown = False
        if self._sgpo["sgpo_credit_unit"] == "tokens" and not getattr(
            self.processing_class, "is_fast", False
        ):
            raise ValueError(
                f"sgpo_credit_unit='tokens' needs a fast tokenizer (token offsets) as processing_class, got "
                f"{type(self.processing_class).__name__}"
            )
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
        self._sgpo_warned_ranking = False
        if self._sgpo["sgpo_mode"] == "all_incorrect":
            self._warn_if_credit_can_outrank_correct()
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

    def _sgpo_judge_health(self, outcome: Any) -> None:
        """Counts judging steps in which the judge gave no verdict at all; after
        ``sgpo_judge_max_failed_steps`` of them in a row, stops training with the judge's error."""
        limit = self._sgpo["sgpo_judge_max_failed_steps"]
        self._sgpo_failed_steps.record(
            outcome,
            limit,
            lambda count: (
                f"SGPO: the judge {judge_name(self.judge)} gave no verdict in {count} "
                f"consecutive judging steps (step {self.state.global_step}, process "
                f"{self.accelerator.process_index}); training would go on as plain GRPO. Last failure: "
                f"{outcome.message}. (sgpo_judge_max_failed_steps={limit}; None never stops)"
            ),
        )

    def _correct(self, rewards_per_func, inputs, prompts, completions, completion_ids_list):
        """Global correctness, ``(correct, unknown)``: bools per row of the gathered batch;
        ``unknown`` where the correctness reward returned None (NaN) or ``correctness_func`` None."""
        if self.correctness_func is None:
            column = rewards_per_func[:, self._sgpo_correctness_column]
            unknown = torch.isnan(column).cpu().numpy()
            return (column > self._sgpo["sgpo_correctness_threshold"]).cpu().numpy(), unknown
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
        local = torch.tensor(
            [float("nan") if v is None else (1.0 if v else 0.0) for v in values],
            device=rewards_per_func.device,
        )
        values = self.accelerator.gather(local).cpu().numpy()
        return values > 0.5, np.isnan(values)

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
        correct, unknown = self._correct(rewards_per_func, inputs, prompts, completions, completion_ids_list)
        # A row every reward function skipped (NaN reward) is unscorable, TRL's convention, and
        # sgpo_rewards ignores it; unknown correctness matters where the row has a reward.
        unknown &= ~np.isnan(rewards)
        if unknown.any():
            # A row whose correctness is unknown is neither judged nor credited, and neither is its
            # group: marking the whole group correct keeps it plain GRPO in both modes.
            unknown_groups = unknown.reshape(-1, group_size).any(axis=1)
            correct = correct | np.repeat(unknown_groups, group_size)
            if not self._sgpo_warned_unknown:
                self._sgpo_warned_unknown = True
                warnings.warn(
                    f"SGPO (step {self.state.global_step}): the correctness of {int(unknown.sum())} of "
                    f"{unknown.size} responses is unknown (the correctness reward returned None); their "
                    f"{int(unknown_groups.sum())} groups stay plain GRPO (warned once; "
                    f"sgpo/correctness_unknown_frac logs it every step)",
                    RuntimeWarning,
                    stacklevel=2,
                )
        self._metrics["train"]["sgpo/correctness_unknown_frac"].append(
            float(unknown.mean()) if unknown.size else 0.0
        )
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
            outcome = run_judge(
                self._sgpo_judge_fn, problems, responses, rows, self._sgpo["sgpo_judge_timeout_s"]
            )
            first_error, num_steps, failure = outcome.first_error, outcome.num_steps, outcome.message
            self._sgpo_judge_health(outcome)
            local[local_rows, 0] = first_error
            local[local_rows, 1] = num_steps
            unit = self._sgpo["sgpo_credit_unit"]
            if unit in ("length", "tokens"):
                delimiter = getattr(self.judge, "delimiter", "\n\n")
                if unit == "length":
                    scores = length_scores(responses, first_error, delimiter=delimiter, strict=False)
                else:
                    offsets = tokenizer_offsets(self.processing_class, responses)
                    scores = token_length_scores(
                        responses, first_error, offsets, delimiter=delimiter, strict=False
                    )
                mismatched = int(np.sum(np.isnan(scores) & (first_error != NO_VERDICT)))
                if mismatched:
                    failure = (failure + "; " if failure else "") + (
                        f"{mismatched} verdicts name a step the response does not have when split with "
                        f"{delimiter!r} (sgpo_credit_unit={unit!r}); those rows are treated as not judged"
                    )
                local_scores[local_rows] = scores
            if failure is not None:
                warnings.warn(
                    f"SGPO (step {self.state.global_step}, process {self.accelerator.process_index}): "
                    f"judge {judge_name(self.judge)}: {failure}; their groups stay plain GRPO this step",
                    RuntimeWarning,
                    stacklevel=2,
                )
            self.last_sgpo_failed_rows = outcome.failed
        else:
            self.last_sgpo_failed_rows = 0
        self.last_sgpo_judged_rows = int(local_rows.size)
        verdicts = self.accelerator.gather(torch.as_tensor(local, device=device)).cpu().numpy()
        if self._sgpo["sgpo_credit_unit"] in ("length", "tokens"):
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
        if self._sgpo["sgpo_mode"] == "all_incorrect" and not self._sgpo_warned_ranking:
            self._warn_if_credited_rows_outrank_correct(out.rewards, out.diversified, correct, group_size)
        for key, value in out.metrics().items():
            self._metrics["train"][key].append(value)
        return out

    def _warn_if_credit_can_outrank_correct(self) -> None:
        """Mode ``all_incorrect`` credits wrong answers next to right ones: the most credit a wrong
        one can get must stay below what a right one earns more, or SGPO teaches the wrong answer."""
        most = self._sgpo_credit.bonus([1.0])[0]
        if self.correctness_func is not None:
            return  # the correctness reward's scale is unknown here; checked on the first batches
        weight = float(self.reward_weights[self._sgpo_correctness_column])
        if most >= weight:
            warnings.warn(
                f"SGPO: sgpo_mode='all_incorrect' can rank a wrong answer above a right one: full credit "
                f"adds {most:g} (sgpo_credit_scale x f(1)), and a right answer of a 0/1 correctness reward "
                f"weighted {weight:g} earns only {weight:g} more; keep the credit below that margin",
                RuntimeWarning,
                stacklevel=3,
            )

    def _warn_if_credited_rows_outrank_correct(self, rewards, credited, correct, group_size) -> None:
        """Warns once, with the values, when a credited wrong answer's reward reaches a right one's
        in its group."""
        r = np.asarray(rewards, dtype=np.float64).reshape(-1, group_size)
        right = np.where(np.asarray(correct).reshape(-1, group_size), r, np.inf).min(axis=1)
        wrong = np.where(np.asarray(credited).reshape(-1, group_size), r, -np.inf).max(axis=1)
        bad = np.flatnonzero(wrong >= right)
        if bad.size:
            self._sgpo_warned_ranking = True
            g = int(bad[0])
            warnings.warn(
                f"SGPO (step {self.state.global_step}): in {bad.size} groups a credited wrong answer's "
                f"reward reaches a right answer's (group {g}: {wrong[g]:g} vs {right[g]:g}); lower "
                f"sgpo_credit_scale below the right/wrong reward margin or use sgpo_mode='all_negative' "
                f"(warned once)",
                RuntimeWarning,
                stacklevel=3,
            )

    # --- the loss step --------------------------------------------------------------------------

    def _compute_loss(self, model, inputs):
        if not self._sgpo["use_sgpo_loss"]:
            return super()._compute_loss(model, inputs)
        return _loss.compute_loss(self, model, inputs)
