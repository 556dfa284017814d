"""``SGPOConfig``: TRL's ``GRPOConfig`` plus the SGPO options."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from trl import GRPOConfig

from ..credit import UNITS, CreditOptions

MODES = ("all_negative", "all_incorrect")


@dataclass
class SGPOConfig(GRPOConfig):
    """``GRPOConfig`` plus the SGPO reward rule and the optional fused loss.

    Every GRPO option keeps its TRL meaning. The SGPO options (``sgpo_rs.sgpo_rewards``):

    - ``sgpo_credit_scale`` (0.5): reward added for full credit; a wrong response whose first
      error is at step ``k`` of ``n`` (score ``c = k / n``; ``-1``: ``c = 1``) gets
      ``sgpo_credit_scale * f(c)``.
    - ``sgpo_rule`` (``"prefix"``: ``f(c) = c``) or ``"logistic"`` (the paper's
      ``f(c) = sigma(sgpo_beta * (c - sgpo_gamma))``); ``sgpo_beta`` (5.0, > 0), ``sgpo_gamma``
      (0.5). ``sgpo_preset="paper"`` sets ``sgpo_rule="logistic"``, ``sgpo_beta=5``,
      ``sgpo_gamma=0.5`` and ``sgpo_credit_scale=1`` unless they are given (``sgpo_rs.credit``).
      After construction the four fields hold the resolved values.
    - ``sgpo_credit_unit`` (``"steps"``): the score ``c`` counts steps; ``"length"`` counts the
      characters of the steps before the first wrong one over all of the response's steps
      (``sgpo_rs.length_scores``, split like the judge splits); ``"tokens"`` counts the tokens of
      the completion's text instead (the trainer's fast tokenizer).
    - ``sgpo_mode`` (``"all_negative"``): credit only groups with no correct response (the
      paper); ``"all_incorrect"`` also credits the wrong responses of mixed groups (keep
      ``sgpo_credit_scale`` below the correct/incorrect reward margin).
    - ``sgpo_correctness_reward``: name of the reward function (as TRL names it: the function's
      ``__name__``, or the reward model's name) whose value decides correctness:
      ``correct = value > sgpo_correctness_threshold``. May be left unset when there is only one
      reward function, or when the trainer gets a ``correctness_func``.
    - ``sgpo_correctness_threshold`` (0.0).
    - ``sgpo_judge_timeout_s`` (``None``: no limit): seconds one judge call may take on one
      process; past it the rows of that call get no verdict (their groups stay plain GRPO).
    - ``sgpo_problem_column``: a dataset column holding the problem text shown to the judge
      (default: the prompt's text; for conversational prompts the last user message).
    - ``sgpo_reference_column``: a dataset column holding a reference solution for each problem;
      a prompted critic (``CriticJudge``, ``OpenAIJudge``, ...) then judges against it (the
      paper's setting). A judge that takes no reference is refused at construction.
    - ``sgpo_judge_preflight`` (``True``): when the trainer is built, before the model is prepared,
      the judge gets a trivial response for one or two dataset rows; if every verdict fails (a dead
      server, a checker that raises) the trainer raises with the judge's own error.
    - ``sgpo_judge_max_failed_steps`` (3): training stops with the judge's last error once this
      many consecutive judging steps (on a process) got no verdict at all; ``None`` never stops.
      Partial failures warn with their counts and the first error.
    - ``use_sgpo_loss`` (``False``): compute the policy loss with ``sgpo_rs.torch.sgpo_loss``
      (same value, gradient and logged metrics as TRL's; CPU tensors only for now).
    """

    sgpo_credit_scale: Optional[float] = field(
        default=None,
        metadata={"help": "SGPO: reward added for full credit (None: 0.5, or the preset's)."},
    )
    sgpo_rule: Optional[str] = field(
        default=None,
        metadata={
            "help": "SGPO: credit rule, 'prefix' (c, the default) or 'logistic' (sigma(beta (c - gamma)))."
        },
    )
    sgpo_beta: Optional[float] = field(
        default=None,
        metadata={"help": "SGPO: steepness of the logistic rule (> 0; None: 5)."},
    )
    sgpo_gamma: Optional[float] = field(
        default=None,
        metadata={"help": "SGPO: threshold of the logistic rule (None: 0.5)."},
    )
    sgpo_credit_unit: str = field(
        default="steps",
        metadata={
            "help": "SGPO: score by 'steps' (first_error / num_steps), 'length' (characters) or 'tokens'."
        },
    )
    sgpo_preset: Optional[str] = field(
        default=None,
        metadata={"help": "SGPO: 'paper' = logistic rule, beta 5, gamma 0.5, credit_scale 1."},
    )
    sgpo_mode: str = field(
        default="all_negative",
        metadata={"help": "SGPO: 'all_negative' (groups with no correct response) or 'all_incorrect'."},
    )
    sgpo_correctness_reward: Optional[str] = field(
        default=None,
        metadata={"help": "SGPO: name of the reward function whose value > threshold means correct."},
    )
    sgpo_correctness_threshold: float = field(
        default=0.0,
        metadata={"help": "SGPO: a response is correct when its correctness reward exceeds this."},
    )
    sgpo_judge_timeout_s: Optional[float] = field(
        default=None,
        metadata={"help": "SGPO: seconds a judge call may take; its rows get no verdict past it."},
    )
    sgpo_problem_column: Optional[str] = field(
        default=None,
        metadata={"help": "SGPO: dataset column with the problem text for the judge (default: prompt)."},
    )
    sgpo_reference_column: Optional[str] = field(
        default=None,
        metadata={"help": "SGPO: dataset column with a reference solution shown to a prompted critic."},
    )
    sgpo_judge_preflight: bool = field(
        default=True,
        metadata={"help": "SGPO: judge a trivial response to one or two dataset rows before training."},
    )
    sgpo_judge_max_failed_steps: Optional[int] = field(
        default=3,
        metadata={
            "help": "SGPO: stop after this many consecutive judging steps with no verdict (None: never)."
        },
    )
    use_sgpo_loss: bool = field(
        default=False,
        metadata={"help": "Compute the policy loss with sgpo_rs.torch.sgpo_loss (identical to TRL's)."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        credit = CreditOptions.resolve(
            self.sgpo_preset,
            credit_scale=self.sgpo_credit_scale,
            rule=self.sgpo_rule,
            beta=self.sgpo_beta,
            gamma=self.sgpo_gamma,
            prefix="sgpo_",
        )
        self.sgpo_credit_scale = credit.credit_scale
        self.sgpo_rule = credit.rule
        self.sgpo_beta = credit.beta
        self.sgpo_gamma = credit.gamma
        if self.sgpo_credit_unit not in UNITS:
            raise ValueError(
                f"sgpo_credit_unit: expected one of {', '.join(UNITS)}, got {self.sgpo_credit_unit!r}"
            )
        if self.sgpo_mode not in MODES:
            raise ValueError(f"sgpo_mode: expected one of {', '.join(MODES)}, got {self.sgpo_mode!r}")
        if not math.isfinite(self.sgpo_correctness_threshold):
            raise ValueError(
                f"sgpo_correctness_threshold: expected a finite number, got {self.sgpo_correctness_threshold}"
            )
        limit = self.sgpo_judge_max_failed_steps
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"sgpo_judge_max_failed_steps: expected None or an integer >= 1, got {limit!r}")
        timeout = self.sgpo_judge_timeout_s
        if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
            raise ValueError(f"sgpo_judge_timeout_s: expected None or seconds > 0, got {timeout!r}")
        if self.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                f"multi_objective_aggregation={self.multi_objective_aggregation!r}: SGPO credits the summed "
                f"reward of each response (the reward that is group-normalised), which only "
                f"'sum_then_normalize' has"
            )
