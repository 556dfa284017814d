"""Throughput of the judge's text kernels: sgpo-rs against a plain Python (``re``) implementation.

    python benches/text_compare.py              # 100k synthetic responses and judge answers
    python benches/text_compare.py --n 10000    # a quick run

Rows:
  split   ``sg.split_steps_batch`` (all cores, GIL released) and a loop of ``sg.split_steps``, against
          ``re.split(r"(?:\\r?\\n){2,}")`` plus the same trimming, per response.
  parse   ``sg.parse_verdicts`` with ``num_steps`` and a loop of ``sg.parse_verdict``, against a
          regex that finds every ``\\boxed{}`` (one nesting level), unwraps ``\\text{}`` and calls
          ``int()``, per answer.

Times are wall-clock ``time.perf_counter`` of the whole call (Python list in, Python list out),
median of ``--repeats`` after one warm-up; throughput is responses per second. The last column is
the Python time over the row's time. The script also reports how often the Python reference agrees
with sgpo-rs (they differ by design on cases the regex gets wrong, e.g. a nested or unclosed last
box).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import sys
from typing import Callable, List, Optional, Tuple

import sgpo_rs as sg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import bench, table  # noqa: E402

# --------------------------------------------------------------------------------------------
# Synthetic data

WORDS = (
    "let x be the number of apples so that 3x + 4 = 19 hence x = 5 and therefore the total "
    "cost is 5 times 2 which equals 10 we check the units carefully then substitute back"
).split()


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 16))).capitalize() + "."


def response(rng: random.Random) -> str:
    """3-10 paragraphs of 1-3 sentences; separators vary like model output does."""
    separators = ["\n\n", "\n\n", "\n\n", "\n\n\n", "\r\n\r\n", "  \n\n"]
    paragraphs = []
    for _ in range(rng.randint(3, 10)):
        lines = [sentence(rng) for _ in range(rng.randint(1, 3))]
        paragraphs.append("\n".join(lines) + rng.choice(separators))
    return "".join(paragraphs).rstrip()


def judge_answer(rng: random.Random, num_steps: int) -> str:
    """A critic's reasoning, then a verdict in one of the forms critics write (or none)."""
    k = rng.randint(-1, num_steps - 1)
    reasoning = " ".join(sentence(rng) for _ in range(rng.randint(3, 8)))
    form = rng.random()
    if form < 0.6:
        verdict = f"\\boxed{{{k}}}"
    elif form < 0.75:
        verdict = f"\\boxed{{\\text{{{k}}}}}"
    elif form < 0.85:
        verdict = f"\\boxed{{ {k} }} as the format \\boxed{{k}} asks, so finally \\boxed{{{k}}}"
    elif form < 0.95:
        verdict = f"The earliest error is in paragraph {k}."
    else:
        verdict = f"\\boxed{{{k}.0}}"
    return f"{reasoning}\n\nTherefore the answer is {verdict}"


# --------------------------------------------------------------------------------------------
# The pure-Python reference (what a training script would write with `re`)

_SEPARATOR = re.compile(r"(?:\r?\n){2,}")


def py_split_steps(text: str) -> List[str]:
    pieces = (piece.lstrip("\r\n").rstrip() for piece in _SEPARATOR.split(text))
    return [piece for piece in pieces if piece]


_BOX = re.compile(r"\\boxed\s*\{((?:[^{}]|\{[^{}]*\})*)\}")
_WRAPPER = re.compile(r"\\(?:text|textrm|textbf|mathrm|mathbf|mbox)\s*\{(.*)\}", re.S)
_INTEGER = re.compile(r"[+-]?\s*[0-9]+", re.A)


def py_parse_verdict(text: str, num_steps: Optional[int] = None) -> Optional[int]:
    boxes = _BOX.findall(text)
    if not boxes:
        return None
    content = boxes[-1].strip()
    wrapped = _WRAPPER.fullmatch(content)
    if wrapped:
        content = wrapped.group(1).strip()
    content = content.replace("\u2212", "-")
    if not _INTEGER.fullmatch(content):
        return None
    k = int(content.replace(" ", ""))
    if k < -1 or (num_steps is not None and k >= num_steps):
        return None
    return k


# --------------------------------------------------------------------------------------------
# Timing


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=100_000, help="responses and judge answers (100000)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    responses = [response(rng) for _ in range(args.n)]
    num_steps = [len(py_split_steps(r)) for r in responses]
    answers = [judge_answer(rng, n) for n in num_steps]
    mb = (sum(map(len, responses)) / 1e6, sum(map(len, answers)) / 1e6)
    print(
        f"sgpo-rs {sg.__version__}, Python {platform.python_version()}, {os.cpu_count()} cores; "
        f"{args.n} responses ({mb[0]:.1f} M chars) and judge answers ({mb[1]:.1f} M chars), "
        f"median of {args.repeats}"
    )

    cases: List[Tuple[str, str, Callable[[], object]]] = [
        ("split", "python re", lambda: [py_split_steps(t) for t in responses]),
        ("split", "sg.split_steps_batch", lambda: sg.split_steps_batch(responses)),
        ("split", "sg.split_steps loop", lambda: [sg.split_steps(t) for t in responses]),
        ("parse", "python re", lambda: [py_parse_verdict(t, n) for t, n in zip(answers, num_steps)]),
        ("parse", "sg.parse_verdicts", lambda: sg.parse_verdicts(answers, num_steps=num_steps)),
        (
            "parse",
            "sg.parse_verdict loop",
            lambda: [sg.parse_verdict(t, num_steps=n) for t, n in zip(answers, num_steps)],
        ),
    ]
    seconds = {(op, impl): bench(fn, args.repeats, warmup=1)[0] for op, impl, fn in cases}
    rows = []
    for op, impl, _ in cases:
        t = seconds[(op, impl)]
        ratio = seconds[(op, "python re")] / t
        rows.append([op, impl, f"{t * 1e3:.1f} ms", f"{args.n / t:,.0f}", f"{ratio:.1f}x"])
    table(["op", "implementation", "median", "responses/s", "vs python"], rows, left=2)

    split_agree = sum(a == b for a, b in zip(sg.split_steps_batch(responses), map(py_split_steps, responses)))
    ours = sg.parse_verdicts(answers, num_steps=num_steps)
    theirs = [py_parse_verdict(t, n) for t, n in zip(answers, num_steps)]
    parse_agree = sum(a == b for a, b in zip(ours, theirs))
    parsed = sum(k is not None for k in ours)
    print(
        f"agreement with the Python reference: split {split_agree / args.n:.2%}, "
        f"parse {parse_agree / args.n:.2%} ({parsed / args.n:.1%} of answers have a verdict)"
    )


if __name__ == "__main__":
    main()
