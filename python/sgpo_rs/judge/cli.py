"""`sgpo-rs judge` (judge a JSONL file of responses, resumably) and `sgpo-rs judge-eval`.

``judge`` reads records ``{"problem", "response", "correct"?, "reference"?}`` (or ``"steps"``
instead of ``"response"``; ``reference``, a reference solution, is shown to a prompted critic),
judges the incorrect ones (``correct`` false or absent; every record with ``--all``) and writes
every record, in input order, with ``first_error``, ``num_steps``, ``credit``
(the score ``first_error / num_steps``, 1 for ``-1``, null without a verdict), ``judged`` and,
for failures, ``judge_error``; with ``--rule``/``--preset`` (and ``--beta``, ``--gamma``) also
``rule_credit``, the score under that credit rule (``sgpo_rs.credit``), and ``credit_rule``;
``--credit-unit length`` scores by the characters of the correct steps instead of their count.
Rows not judged get ``first_error = -2`` and ``credit = null``, so the ``credit`` column lines up
with the input and feeds ``sgpo_rs.sgpo_rewards(credit=...)`` (NaN for null), which applies the
rule itself.

Resuming: each output line carries ``record_key`` (the record's ``id``, else a hash of problem
and response; a repeat gets ``#2``, ``#3``...). A rerun with the same ``--output`` keeps the
complete lines already there, drops a torn last line, and judges only the records whose key is
missing; every line is written and flushed on its own.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import os
import sys
import time
from typing import Any, Dict, Iterator, List, Optional, Set, TextIO, Tuple

from ..credit import PRESETS, RULES, CreditOptions, length_scores
from ..text import split_steps
from .cache import CachedJudge
from .calling import reference_text
from .evaluate import evaluate, record_response
from .rule import CallableJudge, RuleJudge
from .synthetic import make_synthetic, write_jsonl
from .verdict import NO_VERDICT, StepJudge, Verdict, prefix_credit

JUDGES = {"rule": RuleJudge}
"""Judges by name for ``--judge`` that take no options. ``module:attr`` also works."""


def _openai(args: argparse.Namespace) -> StepJudge:
    from .openai_judge import OpenAIJudge

    options: Dict[str, Any] = {}
    if args.max_tokens is not None:
        options["max_tokens"] = args.max_tokens
    return OpenAIJudge(
        _model(args),
        base_url=args.base_url,
        api_key_env=args.api_key_env,
        max_concurrency=args.max_concurrency,
        timeout_s=args.timeout,
        max_retries=args.max_retries,
        temperature=args.temperature,
        stream=args.stream,
        **options,
    )


def _hf(args: argparse.Namespace) -> StepJudge:
    from .hf import HFJudge

    options: Dict[str, Any] = {}
    if args.max_tokens is not None:
        options["max_new_tokens"] = args.max_tokens
    if args.temperature > 0:
        options.update(do_sample=True, temperature=args.temperature)
    return HFJudge(_model(args), batch_size=args.model_batch_size, device=args.device, **options)


def _prm(args: argparse.Namespace) -> StepJudge:
    from .prm import PRMJudge

    return PRMJudge(
        _model(args),
        style=args.prm_style,
        threshold=args.threshold,
        batch_size=args.model_batch_size,
        device=args.device,
        trust_remote_code=args.trust_remote_code,
    )


def _model(args: argparse.Namespace) -> str:
    if not args.model:
        raise ValueError(f"--backend {args.judge} needs --model")
    return str(args.model)


BACKENDS = {"openai": _openai, "hf": _hf, "prm": _prm}
"""Model backends by name for ``--judge``/``--backend``; each is built from the model flags."""


def make_judge(spec: str, args: Optional[argparse.Namespace] = None) -> StepJudge:
    """A judge from a name in :data:`JUDGES` or :data:`BACKENDS` (built from ``args``' model
    flags), or ``package.module:attr`` where ``attr`` is a judge, a judge class/factory taking no
    arguments, or a ``fn(problem, response)``."""
    if spec in JUDGES:
        return JUDGES[spec]()
    if spec in BACKENDS:
        return BACKENDS[spec](args if args is not None else _backend_defaults(spec))
    if ":" not in spec:
        known = ", ".join([*JUDGES, *BACKENDS])
        raise ValueError(f"--judge: unknown judge {spec!r}; known: {known}, or module:attr")
    module, _, attr = spec.partition(":")
    obj: Any = getattr(importlib.import_module(module), attr)
    if isinstance(obj, type) or (callable(obj) and not hasattr(obj, "judge") and _takes_no_args(obj)):
        obj = obj()
    if hasattr(obj, "judge") and hasattr(obj, "identity"):
        return obj
    if callable(obj):
        return CallableJudge(obj, identity=f"callable:{spec}")
    raise ValueError(f"--judge: {spec} is neither a judge nor a callable")


def _takes_no_args(fn: Any) -> bool:
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)


def _with_cache(judge: StepJudge, path: Optional[str]) -> StepJudge:
    return judge if path is None else CachedJudge(judge, path)


# ---------------------------------------------------------------------------------------------
# Files


def read_jsonl(path: str) -> Iterator[Tuple[int, Dict[str, Any]]]:
    """``(line number, record)`` of every non-blank line; a bad line raises naming it."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object")
            yield number, record


def record_keys(records: List[Dict[str, Any]]) -> List[str]:
    """Stable keys: ``id`` (or a hash of problem and response), ``#n`` for the n-th repeat."""
    seen: Dict[str, int] = {}
    keys = []
    for record in records:
        if record.get("id") is not None:
            base = f"id:{record['id']}"
        else:
            blob = json.dumps([record.get("problem"), record_response(record)], ensure_ascii=False)
            base = "sha256:" + hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        seen[base] = seen.get(base, 0) + 1
        keys.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return keys


def done_keys(path: str) -> Set[str]:
    """Keys already in the output; a torn last line (no newline, or not JSON) is cut off."""
    if not os.path.exists(path):
        return set()
    with open(path, "rb") as f:
        data = f.read()
    keep = data.rfind(b"\n") + 1  # everything after the last newline is a torn write
    keys, good = set(), 0
    for line in data[:keep].split(b"\n")[:-1]:
        try:
            record = json.loads(line)
            keys.add(record["record_key"])
        except (ValueError, KeyError, TypeError):
            break  # a damaged line: keep what precedes it, redo the rest
        good += len(line) + 1
    if good != len(data):
        with open(path, "r+b") as f:
            f.truncate(good)
    return keys


class ProgressBar:
    """A one-line bar on stderr, redrawn when the percentage changes."""

    def __init__(self, total: int, stream: Optional[TextIO], label: str = "judging", width: int = 30) -> None:
        self.total, self.stream, self.label, self.width, self.shown = total, stream, label, width, -1

    def update(self, done: int) -> None:
        if self.stream is None or self.total <= 0:
            return
        percent = 100 * done // self.total
        if percent == self.shown:
            return
        self.shown = percent
        filled = self.width * done // self.total
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {percent:3d}% ({done}/{self.total})")
        self.stream.flush()

    def close(self) -> None:
        if self.stream is not None and self.total > 0:
            self.stream.write("\n")
            self.stream.flush()


# ---------------------------------------------------------------------------------------------
# sgpo-rs judge


def output_record(
    record: Dict[str, Any],
    key: str,
    verdict: Optional[Verdict],
    num_steps: int,
    credit_options: Optional[CreditOptions] = None,
    length_delimiter: Optional[str] = None,
) -> Dict[str, Any]:
    """The output line of one record. ``length_delimiter`` (``--credit-unit length``): the score
    counts characters of steps split with it (``sgpo_rs.length_scores``) instead of steps."""
    out = dict(record)
    if verdict is None:
        out.update(first_error=NO_VERDICT, num_steps=num_steps, credit=None, judged=False)
    else:
        credit = prefix_credit(verdict.first_error, verdict.num_steps)
        if length_delimiter is not None and credit is not None:
            score = length_scores(
                [record_response(record)], [verdict.first_error], delimiter=length_delimiter, strict=False
            )[0]
            credit = None if math.isnan(score) else float(score)
        out.update(first_error=verdict.first_error, num_steps=verdict.num_steps, credit=credit, judged=True)
    if credit_options is not None:
        # The score under the chosen rule, f(c), next to the score itself (which is what
        # sgpo_rewards(credit=...) takes: it applies the rule once).
        score = out["credit"]
        out["rule_credit"] = None if score is None else float(credit_options.apply([score])[0])
        out["credit_rule"] = credit_options.rule
    if verdict is not None:
        if verdict.error is not None:
            out["judge_error"] = verdict.error
    out["record_key"] = key
    return out


def judge_batch(judge: StepJudge, records: List[Dict[str, Any]], rows: List[int]) -> Dict[int, Verdict]:
    """The verdicts of ``records[i]`` for ``i`` in ``rows``, by row."""
    if not rows:
        return {}
    problems = [str(records[i].get("problem", "")) for i in rows]
    responses = [record_response(records[i]) for i in rows]
    references = [reference_text(records[i].get("reference")) for i in rows]
    if any(r is not None for r in references):
        if not getattr(judge, "accepts_references", False):
            raise ValueError(
                f"the records carry a 'reference' field, and the judge {judge.identity} does not take "
                f"reference solutions (use a prompted critic: --judge openai or hf)"
            )
        verdicts = judge.judge(problems, responses, references=references)
    else:
        verdicts = judge.judge(problems, responses)
    if len(verdicts) != len(rows):
        raise RuntimeError(f"{judge.identity} returned {len(verdicts)} verdicts for {len(rows)} responses")
    return dict(zip(rows, verdicts))


def run_judge(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        print("sgpo-rs judge: --batch-size must be >= 1", file=sys.stderr)
        return 2
    try:
        credit_options = None
        if any(getattr(args, name, None) is not None for name in ("rule", "beta", "gamma", "preset")):
            credit_options = CreditOptions.resolve(
                args.preset, rule=args.rule, beta=args.beta, gamma=args.gamma
            )
        judge = _with_cache(make_judge(args.judge, args), args.cache)
        records = [record for _, record in read_jsonl(args.input)]
        if any(r.get("reference") is not None for r in records) and not getattr(
            judge, "accepts_references", False
        ):
            raise ValueError(
                f"{args.input}: the records carry a 'reference' field, and the judge {judge.identity} "
                f"does not take reference solutions (use a prompted critic: --judge openai or hf)"
            )
    except (OSError, ValueError, TypeError, ImportError, AttributeError) as exc:
        print(f"sgpo-rs judge: {exc}", file=sys.stderr)
        return 2
    keys = record_keys(records)
    length_delimiter = getattr(judge, "delimiter", "\n\n") if args.credit_unit == "length" else None
    done = done_keys(args.output)
    todo = [i for i, key in enumerate(keys) if key not in done]
    stream = None if args.quiet else sys.stderr
    bar = ProgressBar(len(todo), stream)
    counts = {"found_error": 0, "no_error": 0, "no_verdict": 0, "not_judged": 0}
    failures: List[str] = []
    start = time.perf_counter()
    with open(args.output, "a", encoding="utf-8") as out:
        for b in range(0, len(todo), args.batch_size):
            batch = todo[b : b + args.batch_size]
            judged = [i for i in batch if args.all or not records[i].get("correct", False)]
            try:
                verdicts = judge_batch(judge, records, judged)
            except Exception as exc:  # noqa: BLE001 - stop cleanly; what was written stays
                bar.close()
                print(
                    f"sgpo-rs judge: the judge failed ({type(exc).__name__}: {exc}); {b} of {len(todo)} "
                    "records written; rerun the same command to resume",
                    file=sys.stderr,
                )
                return 1
            for n, i in enumerate(batch):
                verdict = verdicts.get(i)
                steps = 0 if verdict is not None else len(split_steps(record_response(records[i])))
                if verdict is None:
                    counts["not_judged"] += 1
                elif verdict.first_error >= 0:
                    counts["found_error"] += 1
                elif verdict.first_error == -1:
                    counts["no_error"] += 1
                else:
                    counts["no_verdict"] += 1
                    failures.append(f"{keys[i]}: {verdict.error or 'no verdict'}")
                out.write(
                    json.dumps(
                        output_record(records[i], keys[i], verdict, steps, credit_options, length_delimiter),
                        ensure_ascii=False,
                    )
                )
                out.write("\n")
                out.flush()
                bar.update(b + n + 1)
    bar.close()
    print(
        summary(len(records), len(records) - len(todo), counts, failures, time.perf_counter() - start, judge)
    )
    judged = counts["found_error"] + counts["no_error"] + counts["no_verdict"]
    if judged and counts["no_verdict"] == judged and failures:
        # Every line is written (with its judge_error), but a judge that answered nothing is a
        # failed run, not a finished one: say so and exit non-zero.
        print(
            f"sgpo-rs judge: the judge gave no verdict for any of the {judged} records it judged "
            f"(first failure: {failures[0]})",
            file=sys.stderr,
        )
        return 1
    return 0


def summary(
    total: int, resumed: int, counts: Dict[str, int], failures: List[str], seconds: float, judge: StepJudge
) -> str:
    judged = counts["found_error"] + counts["no_error"] + counts["no_verdict"]
    lines = [
        f"judge {judge.identity}: {total} records, {resumed} already in the output, {judged} judged, "
        f"{counts['not_judged']} skipped as correct ({seconds:.1f} s)"
    ]
    if judged:
        lines.append(
            "verdicts: "
            + ", ".join(
                f"{name} {counts[name]} ({100 * counts[name] / judged:.1f}%)"
                for name in ("found_error", "no_error", "no_verdict")
            )
        )
    if isinstance(judge, CachedJudge):
        lines.append(f"cache: {judge.hits} hits, {judge.misses} misses")
    if failures:
        lines.append(
            f"failures ({len(failures)}): " + "; ".join(failures[:5]) + (" ..." if len(failures) > 5 else "")
        )
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``judge`` flags and ``run`` as its handler."""
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    add = parser.add_argument
    add("--input", required=True, help="JSONL of {problem, response (or steps), correct?}")
    add("--output", required=True, help="JSONL written (appended to when resuming)")
    add_backend_arguments(parser)
    add("--all", action="store_true", help="judge correct records too")
    add("--cache", default=None, help="sqlite verdict cache path")
    add("--batch-size", type=int, default=16, help="responses per judge call")
    add("--quiet", action="store_true", help="no progress bar")
    group = parser.add_argument_group(
        "credit rule (any of these adds rule_credit and credit_rule to each line)"
    )
    group.add_argument(
        "--rule", choices=RULES, default=None, help="prefix: f(c) = c; logistic: sigma(beta (c - gamma))"
    )
    group.add_argument(
        "--credit-unit",
        choices=("steps", "length"),  # "tokens" needs the policy's tokenizer: the trainers only
        default="steps",
        help="credit = first_error / num_steps (steps) or the characters of the correct steps (length)",
    )
    group.add_argument("--beta", type=float, default=None, help="logistic steepness (> 0; unset: 5)")
    group.add_argument("--gamma", type=float, default=None, help="logistic threshold (unset: 0.5)")
    group.add_argument(
        "--preset", choices=tuple(PRESETS), default=None, help="paper: logistic, beta 5, gamma 0.5"
    )
    parser.set_defaults(run=run_judge)


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """``--judge``/``--backend`` and the flags of the model backends."""
    add = parser.add_argument
    names = ", ".join([*JUDGES, *BACKENDS])
    add("--judge", "--backend", dest="judge", default="rule", help=f"judge: {names}, or package.module:attr")
    group = parser.add_argument_group("model backends (--backend openai, hf, prm)")
    add = group.add_argument
    add("--model", default=None, help="openai: the served model name; hf, prm: a path or hub id")
    add("--base-url", default=None, help="openai: the server root, e.g. http://127.0.0.1:8000/v1")
    add("--api-key-env", default="OPENAI_API_KEY", help="openai: environment variable holding the key")
    add("--max-concurrency", type=int, default=8, help="openai: requests in flight at once")
    add("--timeout", type=float, default=120.0, help="openai: seconds per request")
    add("--max-retries", type=int, default=4, help="openai: retries of a failed request")
    add("--stream", action="store_true", help="openai: stream replies")
    add("--temperature", type=float, default=0.0, help="openai, hf: sampling temperature (0: greedy)")
    add("--max-tokens", type=int, default=None, help="openai, hf: reply budget; unset: 4096 / 1024")
    add("--model-batch-size", type=int, default=8, help="hf, prm: sequences per forward pass")
    add("--device", default=None, help="hf, prm: torch device; unset: cuda if available")
    add("--prm-style", choices=("qwen", "math-shepherd"), default="qwen", help="prm: the PRM's interface")
    add("--threshold", type=float, default=0.5, help="prm: a step scoring below it is wrong")
    add("--trust-remote-code", action="store_true", help="prm: allow the model's own code (Qwen PRM)")


def _backend_defaults(spec: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_backend_arguments(parser)
    return parser.parse_args(["--judge", spec])


# ---------------------------------------------------------------------------------------------
# sgpo-rs judge-eval


def run_eval(args: argparse.Namespace) -> int:
    if args.make_synthetic is not None:
        if args.output is None:
            print("sgpo-rs judge-eval: --make-synthetic needs --output", file=sys.stderr)
            return 2
        records = make_synthetic(args.make_synthetic, seed=args.seed)
        write_jsonl(records, args.output)
        errors = sum(r["label"] >= 0 for r in records)
        print(f"wrote {len(records)} records ({errors} with an error, seed {args.seed}) to {args.output}")
        return 0
    if args.input is None:
        print("sgpo-rs judge-eval: give --input, or --make-synthetic N --output PATH", file=sys.stderr)
        return 2
    try:
        judge = _with_cache(make_judge(args.judge, args), args.cache)
        records = [record for _, record in read_jsonl(args.input)]
        if any("label" not in r for r in records):
            raise ValueError(f"{args.input}: every record needs a 'label' (first wrong step or -1)")
    except (OSError, ValueError, ImportError, AttributeError) as exc:
        print(f"sgpo-rs judge-eval: {exc}", file=sys.stderr)
        return 2
    if args.batch_size < 1:
        print("sgpo-rs judge-eval: --batch-size must be >= 1", file=sys.stderr)
        return 2
    score, _ = evaluate(judge, records, batch_size=args.batch_size)

    def pct(x: float) -> str:
        return "n/a" if math.isnan(x) else f"{100 * x:.1f}"

    print(f"judge {judge.identity} on {args.input}: ProcessBench metrics")
    print(f"  accuracy on erroneous samples: {pct(score.error_accuracy)} ({score.num_error} samples)")
    print(f"  accuracy on correct samples:   {pct(score.correct_accuracy)} ({score.num_correct} samples)")
    print(f"  F1:                            {pct(score.f1)}")
    print(f"  missing verdicts:              {score.num_missing}")
    return 0


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``judge-eval`` flags and ``run`` as its handler."""
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    add = parser.add_argument
    add("--input", default=None, help="ProcessBench-format JSONL: problem, steps or response, label")
    add_backend_arguments(parser)
    add("--cache", default=None, help="sqlite verdict cache path")
    add("--batch-size", type=int, default=64, help="responses per judge call")
    add("--make-synthetic", type=int, default=None, metavar="N", help="write N synthetic records instead")
    add("--output", default=None, help="where --make-synthetic writes")
    add("--seed", type=int, default=0, help="seed of --make-synthetic")
    parser.set_defaults(run=run_eval)
