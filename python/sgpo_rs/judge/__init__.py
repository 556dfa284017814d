"""Step-wise judges: who says where a wrong response first goes wrong.

    from sgpo_rs.judge import RuleJudge, CachedJudge
    judge = CachedJudge(RuleJudge(), "verdicts.sqlite")
    verdicts = judge.judge(problems, responses)        # one Verdict per response
    first_error = [v.first_error for v in verdicts]     # -1 no error found, -2 no verdict
    num_steps = [v.num_steps for v in verdicts]

Any object with ``identity`` and ``judge(problems, responses) -> list[Verdict]`` is a judge
(:class:`StepJudge`). Backends here: :class:`RuleJudge` (exact, for arithmetic chains),
:class:`CallableJudge` (any Python function), :class:`CriticJudge` (a prompted critic model over any
``generate(prompts) -> replies`` function), and the model backends :class:`OpenAIJudge` (any
OpenAI-compatible chat-completions server), :class:`HFJudge` (a local transformers causal LM) and
:class:`PRMJudge` (a process reward model: Qwen2.5-Math-PRM or Math-Shepherd style). The model
backends import ``openai`` / ``torch`` / ``transformers`` only when constructed.
"""

from .cache import CachedJudge, VerdictCache, cache_key
from .critic import CriticJudge
from .evaluate import ProcessBenchScore, evaluate, processbench_score
from .hf import HFJudge
from .openai_judge import OpenAIJudge
from .prm import PRMJudge
from .prompt import DEFAULT_TEMPLATE, PROMPT_VERSION, build_prompt, neutralise, parse_reply
from .rule import CallableJudge, RuleJudge
from .synthetic import make_synthetic
from .verdict import NO_ERROR, NO_VERDICT, StepJudge, Verdict, missing, prefix_credit

__all__ = [
    "DEFAULT_TEMPLATE",
    "NO_ERROR",
    "NO_VERDICT",
    "PROMPT_VERSION",
    "CachedJudge",
    "CallableJudge",
    "CriticJudge",
    "HFJudge",
    "OpenAIJudge",
    "PRMJudge",
    "ProcessBenchScore",
    "RuleJudge",
    "StepJudge",
    "Verdict",
    "VerdictCache",
    "build_prompt",
    "cache_key",
    "evaluate",
    "make_synthetic",
    "missing",
    "neutralise",
    "parse_reply",
    "prefix_credit",
    "processbench_score",
]
