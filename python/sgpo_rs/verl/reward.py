"""verl's custom reward function with the step-wise judge's verdict as reward extra info."""

from __future__ import annotations

import inspect
import warnings
from typing import Any, Callable, Dict, Optional

from ..credit import UNITS, length_scores, token_length_scores, tokenizer_offsets
from ..judge.calling import FailureStreak, as_judge_fn, run_judge
from ..judge.verdict import NO_VERDICT
from . import verdicts

PROBLEM_KEYS = ("question", "problem", "prompt")


def _problem(extra_info: Any, problem_key: Optional[str]) -> str:
    if not isinstance(extra_info, dict):
        return ""
    if problem_key is not None:
        if problem_key not in extra_info:
            raise KeyError(
                f"problem_key: {problem_key!r} is not in the sample's extra_info (keys: {sorted(extra_info)})"
            )
        return str(extra_info[problem_key])
    for key in PROBLEM_KEYS:
        if key in extra_info:
            return str(extra_info[key])
    return ""


JUDGE_AT = ("reward", "advantage")


def make_compute_score(
    base_score_fn: Callable[..., Any],
    judge: Any = None,
    *,
    judge_at: str = "reward",
    problem_key: Optional[str] = None,
    timeout_s: Optional[float] = 120.0,
    reference_from_ground_truth: bool = False,
    max_consecutive_failures: Optional[int] = 32,
    credit_unit: str = "steps",
    tokenizer: Any = None,
) -> Callable[..., Dict[str, Any]]:
    """A verl ``compute_score`` that adds the judge's verdict to ``base_score_fn``'s score.

    ``base_score_fn(data_source, solution_str, ground_truth, extra_info=None, **kwargs)`` is the
    task's own reward (a float, or verl's dict form with ``"score"``). A response is correct when its
    score is > 0; only incorrect ones are judged (one judge call each). Returns verl's dict form::

        {"score": s, ..., "sgpo_correct": bool, "sgpo_first_error": int, "sgpo_num_steps": int,
         "sgpo_judged": bool}

    (scalars only, so verl can stack them). The problem text for the judge is
    ``extra_info[problem_key]`` (default: the first of ``question``, ``problem``, ``prompt``).

    Judging per sample costs judge calls on mixed groups too, whose verdicts SGPO's default mode
    does not use (it needs all-negative groups only); the reward function cannot see the group.
    A failing judge leaves the row unjudged (``-2``) with a warning, and that row's group stays plain
    GRPO; ``sgpo/judge_missing_frac`` in verl's metrics shows how often.

    ``reference_from_ground_truth=True`` shows verl's ``ground_truth`` to the judge as the reference
    solution (for a prompted critic such as ``OpenAIJudge``: the paper's reference-anchored
    judging; a worked solution there helps more than a bare final answer). A callable judge gets it
    in its row as ``row["ground_truth"]`` either way.

    ``credit_unit="length"`` adds ``sgpo_score``, the length-based score of the response (its
    steps' characters before the first wrong one over all of them, split as the judge splits;
    NaN without a verdict), which the ``sgpo`` estimator uses with
    ``+algorithm.sgpo.credit_unit=length``; ``credit_unit="tokens"`` counts the response's tokens
    instead (``tokenizer``: the policy's fast tokenizer), with ``credit_unit=tokens`` there.

    ``judge_at="advantage"`` (with ``judge=None``) defers judging to the ``sgpo`` estimator, which
    knows the groups and judges only the responses the rule uses, in one batched call in the
    driver (:mod:`sgpo_rs.verl.deferred`: fewer judge calls, but on the step's critical path).
    The reward function then adds the texts the judge needs (``sgpo_problem``, ``sgpo_response``,
    ``sgpo_reference``: verl's ``ground_truth`` as text with ``reference_from_ground_truth``, else
    empty) instead of a verdict; give the driver its judge with ``+algorithm.sgpo.judge=
    package.module:make_judge`` or ``sgpo_rs.verl.set_judge``. ``credit_unit="length"`` is then
    set on the estimator alone (``+algorithm.sgpo.credit_unit=length``); ``"tokens"`` is not
    available there.

    A dead judge is loud: after ``max_consecutive_failures`` responses in a row (per reward worker)
    for which the judge failed (raised, timed out, returned no valid verdict or one carrying an
    error), the reward function raises ``RuntimeError`` with the judge's last error instead of
    letting the run continue as plain GRPO; ``None`` never stops.
    """
    if judge_at not in JUDGE_AT:
        raise ValueError(f"judge_at: expected one of {JUDGE_AT}, got {judge_at!r}")
    if judge_at == "advantage":
        if judge is not None:
            raise ValueError(
                "judge: with judge_at='advantage' the judge runs in the trainer's driver, not in the reward "
                "function; pass judge=None and set +algorithm.sgpo.judge=package.module:make_judge (or call "
                "sgpo_rs.verl.set_judge there)"
            )
        if credit_unit != "steps":
            raise ValueError(
                f"credit_unit: with judge_at='advantage' the estimator computes the credit; set "
                f"+algorithm.sgpo.credit_unit there (steps or length), not credit_unit={credit_unit!r} here"
            )
        return _deferred_compute_score(base_score_fn, problem_key, reference_from_ground_truth)
    if judge is None:
        raise TypeError(
            "judge: expected a step judge (or judge_at='advantage' to judge in the driver), got None"
        )
    judge_fn = as_judge_fn(judge, "ground_truth" if reference_from_ground_truth else None)
    if max_consecutive_failures is not None and (
        isinstance(max_consecutive_failures, bool)
        or not isinstance(max_consecutive_failures, int)
        or max_consecutive_failures < 1
    ):
        raise ValueError(
            f"max_consecutive_failures: expected None or an integer >= 1, got {max_consecutive_failures!r}"
        )
    failures = FailureStreak()  # responses in a row the judge gave nothing for, per worker
    if credit_unit not in UNITS:
        raise ValueError(f"credit_unit: expected one of {UNITS}, got {credit_unit!r}")
    if credit_unit == "tokens":
        tokenizer_offsets(tokenizer, [""])  # a fast tokenizer, or TypeError now
    delimiter = getattr(judge, "delimiter", "\n\n")

    def compute_score(
        data_source: Any, solution_str: str, ground_truth: Any, extra_info: Any = None, **kwargs: Any
    ) -> Dict[str, Any]:
        result = _base_result(base_score_fn, data_source, solution_str, ground_truth, extra_info, kwargs)
        correct = float(result["score"]) > 0
        first_error, num_steps, judged = NO_VERDICT, 0, False
        if not correct:
            row = dict(extra_info) if isinstance(extra_info, dict) else {}
            row.setdefault("ground_truth", ground_truth)
            outcome = run_judge(
                judge_fn, [_problem(extra_info, problem_key)], [solution_str], [row], timeout_s
            )
            failures.record(
                outcome,
                max_consecutive_failures,
                lambda count: (
                    f"sgpo_rs.verl: the judge gave no verdict for {count} responses in a row (the run "
                    f"would go on as plain GRPO); last failure: {outcome.message} "
                    f"(max_consecutive_failures={max_consecutive_failures}; None never stops)"
                ),
            )
            if outcome.message is not None:
                warnings.warn(f"sgpo_rs.verl: {outcome.message}", RuntimeWarning, stacklevel=2)
            first_error, num_steps, judged = int(outcome.first_error[0]), int(outcome.num_steps[0]), True
        result.update(
            {
                verdicts.CORRECT: bool(correct),
                verdicts.FIRST_ERROR: first_error,
                verdicts.NUM_STEPS: num_steps,
                verdicts.JUDGED: judged,
            }
        )
        if credit_unit == "length":
            score = length_scores([solution_str], [first_error], delimiter=delimiter, strict=False)[0]
            result[verdicts.SCORE] = float(score)
        elif credit_unit == "tokens":
            offsets = tokenizer_offsets(tokenizer, [solution_str])
            score = token_length_scores(
                [solution_str], [first_error], offsets, delimiter=delimiter, strict=False
            )[0]
            result[verdicts.SCORE] = float(score)
        return result

    compute_score.__signature__ = inspect.signature(compute_score)  # type: ignore[attr-defined]
    return compute_score


def _base_result(
    base_score_fn: Callable[..., Any],
    data_source: Any,
    solution_str: str,
    ground_truth: Any,
    extra_info: Any,
    kwargs: Dict[str, Any],
) -> Dict[str, Any]:
    base = base_score_fn(data_source, solution_str, ground_truth, extra_info=extra_info, **kwargs)
    result = dict(base) if isinstance(base, dict) else {"score": base}
    if "score" not in result:
        raise ValueError(f"base_score_fn: expected a float or a dict with 'score', got keys {sorted(result)}")
    return result


def _deferred_compute_score(
    base_score_fn: Callable[..., Any], problem_key: Optional[str], reference_from_ground_truth: bool
) -> Callable[..., Dict[str, Any]]:
    """The reward function of ``judge_at="advantage"``: the base score, the correctness and the
    texts the driver's judge will see; no verdict yet (``sgpo_first_error`` -2)."""

    def compute_score(
        data_source: Any, solution_str: str, ground_truth: Any, extra_info: Any = None, **kwargs: Any
    ) -> Dict[str, Any]:
        result = _base_result(base_score_fn, data_source, solution_str, ground_truth, extra_info, kwargs)
        reference = "" if not reference_from_ground_truth or ground_truth is None else str(ground_truth)
        result.update(
            {
                verdicts.CORRECT: bool(float(result["score"]) > 0),
                verdicts.FIRST_ERROR: NO_VERDICT,
                verdicts.NUM_STEPS: 0,
                verdicts.JUDGED: False,
                verdicts.PROBLEM: _problem(extra_info, problem_key),
                verdicts.RESPONSE: str(solution_str),
                verdicts.REFERENCE: reference,
            }
        )
        return result

    compute_score.__signature__ = inspect.signature(compute_score)  # type: ignore[attr-defined]
    return compute_score
