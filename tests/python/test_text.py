"""Step segmentation and verdict parsing: an adversarial verdict corpus, splitting examples, pure
Python (regex) references checked with hypothesis, and bad input that must raise TypeError or
ValueError naming the argument."""

from __future__ import annotations

import re

import numpy as np
import pytest
import sgpo_rs as sg
from hypothesis import given, settings
from hypothesis import strategies as st

# Unicode White_Space, the set Rust's `trim_end` strips (`str.isspace` adds \x1c-\x1f).
WHITE_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000" + "".join(
    map(chr, range(0x2000, 0x200B))
)
MINUS = "\u2212"
NAN = float("nan")

# --------------------------------------------------------------------------------------------------
# Verdicts

VERDICTS = [
    # (id, judge text, num_steps, expected)
    ("plain", "The first error is in paragraph 2. \\boxed{2}", None, 2),
    ("zero", "\\boxed{0}", None, 0),
    ("no-error", "All steps are correct: \\boxed{-1}", None, -1),
    ("leading-zeros", "\\boxed{007}", None, 7),
    ("spaces", "\\boxed{ -1 }", None, -1),
    ("space-before-brace", "\\boxed {3}", None, 3),
    ("newline-before-brace", "\\boxed\n{3}", None, 3),
    ("plus", "\\boxed{+2}", None, 2),
    ("unicode-minus", f"\\boxed{{{MINUS}1}}", None, -1),
    ("minus-space", "\\boxed{- 1}", None, -1),
    ("text", "\\boxed{\\text{3}}", None, 3),
    ("text-space", "\\boxed{\\text {3}}", None, 3),
    ("mathrm", "\\boxed{\\mathrm{ 3 }}", None, 3),
    ("nested-wrappers", "\\boxed{\\textbf{\\text{-1}}}", None, -1),
    ("sign-outside-wrapper", "\\boxed{-\\text{1}}", None, -1),
    ("bare-group", "\\boxed{{5}}", None, 5),
    ("deep-groups", "\\boxed{" + "{" * 50 + "4" + "}" * 50 + "}", None, 4),
    ("in-math", "$$\\boxed{1}$$", None, 1),
    # several boxes: the last one wins
    ("last-wins", "\\boxed{1} Wait, I was wrong. \\boxed{2}", None, 2),
    ("nested-box", "\\boxed{\\boxed{2}}", None, 2),
    ("quoted-format-first", 'Answer in the form "\\boxed{k}". Answer: \\boxed{4}', None, 4),
    ("quoted-format-last", '\\boxed{4} (formatted as "\\boxed{k}")', None, None),
    ("quoted-number-last", 'I said "\\boxed{1}" before; final: \\boxed{3}', None, 3),
    ("prose-boxed-after", "\\boxed{2}; \\boxed is the format", None, 2),
    ("boxedfoo", "\\boxedfoo{1}", None, None),
    ("unclosed-last", "\\boxed{1} then \\boxed{2", None, None),
    # no verdict
    ("empty-text", "", None, None),
    ("no-box", "The first error is in paragraph 3.", None, None),
    ("empty-box", "\\boxed{}", None, None),
    ("blank-box", "\\boxed{  }", None, None),
    ("unclosed", "\\boxed{2", None, None),
    ("escaped-close", "\\boxed{2\\}", None, None),
    ("escaped-braces", "\\boxed{\\{3\\}}", None, None),
    ("float", "\\boxed{3.0}", None, None),
    ("comma", "\\boxed{1,000}", None, None),
    ("two-numbers", "\\boxed{3 4}", None, None),
    ("double-minus", "\\boxed{--1}", None, None),
    ("plus-minus", "\\boxed{+-1}", None, None),
    ("sign-only", "\\boxed{-}", None, None),
    ("words", "\\boxed{paragraph 3}", None, None),
    ("letter", "\\boxed{k}", None, None),
    ("wrapper-then-more", "\\boxed{\\text{3}4}", None, None),
    ("two-groups", "\\boxed{{1}{2}}", None, None),
    ("below-minus-one", "\\boxed{-2}", None, None),
    ("huge", "\\boxed{99999999999999999999999}", None, None),
    ("int64-max-plus-one", "\\boxed{9223372036854775808}", None, None),
    ("int64-min", "\\boxed{-9223372036854775808}", None, None),
    ("fullwidth-digit", "\\boxed{\uff13}", None, None),
    ("int64-max", "\\boxed{9223372036854775807}", None, 2**63 - 1),
    # num_steps bounds: -1 <= k < num_steps
    ("in-range", "\\boxed{2}", 3, 2),
    ("at-num-steps", "\\boxed{3}", 3, None),
    ("beyond-num-steps", "\\boxed{99}", 3, None),
    ("no-error-in-range", "\\boxed{-1}", 3, -1),
    ("zero-steps", "\\boxed{0}", 0, None),
]


@pytest.mark.parametrize("text, num_steps, expected", [v[1:] for v in VERDICTS], ids=[v[0] for v in VERDICTS])
def test_verdict_corpus(text, num_steps, expected):
    got = sg.parse_verdict(text, num_steps=num_steps)
    assert got == expected and type(got) is type(expected)
    assert sg.parse_verdicts([text], num_steps=None if num_steps is None else [num_steps]) == [expected]


def test_parse_verdicts_matches_single_calls():
    texts = [v[1] for v in VERDICTS]
    assert sg.parse_verdicts(texts) == [sg.parse_verdict(t) for t in texts]
    counts = np.arange(len(texts)) % 5
    expect = [sg.parse_verdict(t, num_steps=int(n)) for t, n in zip(texts, counts)]
    assert sg.parse_verdicts(texts, num_steps=counts) == expect
    assert sg.parse_verdicts(tuple(texts), num_steps=counts.tolist()) == expect
    assert sg.parse_verdicts(iter(texts)) == sg.parse_verdicts(texts)
    assert sg.parse_verdicts([]) == []


def test_huge_judge_texts():
    assert sg.parse_verdict("\\boxed{" + "{" * 1_000_000) is None
    assert sg.parse_verdict("x " * 1_000_000 + "\\boxed{5}", num_steps=6) == 5
    assert sg.parse_verdict("\\boxed " * 200_000) is None


# --------------------------------------------------------------------------------------------------
# Steps

SPLITS = [
    ("paragraphs", "a\n\nb\n\nc", ["a", "b", "c"]),
    ("single-newline-stays", "a\nstill a\n\nb", ["a\nstill a", "b"]),
    ("crlf", "a\r\n\r\nb", ["a", "b"]),
    ("long-run", "a\n\n\n\n\nb", ["a", "b"]),
    ("mixed-run", "a\n\r\n\nb", ["a", "b"]),
    ("trailing-whitespace", "a  \t\n\nb \n", ["a", "b"]),
    ("indent-kept", "a\n\n  b", ["a", "  b"]),
    ("space-line-is-not-blank", "a\n  \nb", ["a\n  \nb"]),
    ("blank-step-dropped", "a\n\n \n\nb", ["a", "b"]),
    ("leading-blank", "\n\n\na\n\n", ["a"]),
    ("empty", "", []),
    ("whitespace-only", " \n\n\t\r\n\u3000", []),
    ("one-step", "no separator here.", ["no separator here."]),
    ("unicode", "é😀\n\n日本", ["é😀", "日本"]),
]


@pytest.mark.parametrize("text, expected", [s[1:] for s in SPLITS], ids=[s[0] for s in SPLITS])
def test_split_examples(text, expected):
    assert sg.split_steps(text) == expected
    assert [text[a:b] for a, b in sg.step_spans(text)] == expected


def test_markers():
    text = (
        "Let me plan.\nStep 1: x = 2\nso y = 4\n  Step 2 : add\n### Step 3: done\n"
        "**Step 4:** check\nas in Step 5: mid-line\nstep 6: lower case"
    )
    assert sg.split_steps(text, delimiter="markers") == [
        "Let me plan.",
        "Step 1: x = 2\nso y = 4",
        "  Step 2 : add",
        "### Step 3: done",
        "**Step 4:** check\nas in Step 5: mid-line",
        "step 6: lower case",
    ]
    assert sg.split_steps("Step 1: a\n\nStep 2: b", delimiter=sg.text.MARKERS) == ["Step 1: a", "Step 2: b"]
    assert sg.split_steps("no markers\n\nat all", delimiter="markers") == ["no markers\n\nat all"]


def test_custom_delimiter():
    assert sg.split_steps("a<extra_0>b<extra_0><extra_0> c ", delimiter="<extra_0>") == ["a", "b", " c"]
    assert sg.split_steps("a\nb\n\nc", delimiter="\n") == ["a", "b", "c"]


def test_char_offsets_not_bytes():
    text = "日本語 😀\n\nsecond é\n\n\nthird"
    spans = sg.step_spans(text)
    assert spans == [(0, 5), (7, 15), (18, 23)]
    assert [text[a:b] for a, b in spans] == sg.split_steps(text)


def test_batch_matches_single_calls():
    texts = [s[1] for s in SPLITS]
    assert sg.split_steps_batch(texts) == [sg.split_steps(t) for t in texts]
    assert sg.split_steps_batch(texts, delimiter="markers") == [
        sg.split_steps(t, delimiter="markers") for t in texts
    ]
    assert sg.split_steps_batch([]) == []


def test_lone_surrogates():
    # Only reachable through decoders' surrogateescape, but a str all the same.
    text = "a\udc80\n\nb\udcff \n\n\udc80"
    assert sg.split_steps(text) == ["a\udc80", "b\udcff", "\udc80"]
    assert [text[a:b] for a, b in sg.step_spans(text)] == sg.split_steps(text)
    assert sg.split_steps_batch([text, "x"]) == [sg.split_steps(text), ["x"]]
    assert sg.parse_verdict("\udc80 \\boxed{2}") == 2
    assert sg.parse_verdicts(["\\boxed{1\udc80}", "\\boxed{1}"]) == [None, 1]


# --------------------------------------------------------------------------------------------------
# Pure Python references, checked on arbitrary text


def ref_clean(pieces):
    out = []
    for piece in pieces:
        piece = piece.lstrip("\r\n").rstrip(WHITE_SPACE)
        if piece:
            out.append(piece)
    return out


def ref_split(text, delimiter="\n\n"):
    if delimiter == "\n\n":
        return ref_clean(re.split(r"(?:\r?\n){2,}", text))
    if delimiter == "markers":
        marker = re.compile(r"^[ \t#*]*step[ \t]*[0-9]+[ \t*]*:", re.I | re.M | re.A)
        starts = [0] + [m.start() for m in marker.finditer(text)] + [len(text)]
        return ref_clean(text[a:b] for a, b in zip(starts, starts[1:]))
    return ref_clean(text.split(delimiter))


FRAGMENTS = [
    "\n",
    "\n\n",
    "\r\n",
    "\r",
    " ",
    "\t",
    "\u3000",
    "\x85",
    "\x1c",
    "\u2028",
    "a",
    "x = 2.",
    "é",
    "日本",
    "😀",
    "Step 1:",
    "**Step 2:**",
    "### step 3 :",
    "ſtep 4:",
    "\\boxed",
    "\\boxed{",
    "{",
    "}",
    "\\",
    "\\text{",
    "-",
    "+",
    MINUS,
    "7",
    "-1",
    "<extra_0>",
]

texts = st.lists(st.sampled_from(FRAGMENTS) | st.text(max_size=8), max_size=40).map("".join)
delimiters = st.sampled_from(["\n\n", "markers", "\n", "<extra_0>", "ки", " ", "Step"])


@settings(max_examples=400, deadline=None)
@given(text=texts | st.text(), delimiter=delimiters)
def test_split_matches_reference_and_spans_map_back(text, delimiter):
    steps = sg.split_steps(text, delimiter=delimiter)
    assert steps == ref_split(text, delimiter)
    spans = sg.step_spans(text, delimiter=delimiter)
    assert [text[a:b] for a, b in spans] == steps
    assert all(a < b for a, b in spans)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:]))
    assert sg.split_steps_batch([text, text], delimiter=delimiter) == [steps, steps]


@settings(max_examples=400, deadline=None)
@given(text=texts | st.text(), num_steps=st.none() | st.integers(0, 2**63 - 1))
def test_parse_never_raises(text, num_steps):
    k = sg.parse_verdict(text, num_steps=num_steps)
    assert k is None or (k >= -1 and (num_steps is None or k < num_steps))
    assert k is None or "\\boxed" in text


@settings(max_examples=300, deadline=None)
@given(
    prefix=texts,
    suffix=texts.filter(lambda s: "\\boxed" not in s),
    num_steps=st.integers(1, 1000),
    data=st.data(),
)
def test_boxed_index_round_trips(prefix, suffix, num_steps, data):
    k = data.draw(st.integers(-1, num_steps - 1))
    body = data.draw(st.sampled_from([str(k), f" {k} ", f"\\text{{{k}}}", f"{{{k}}}"]))
    text = f"{prefix}\\boxed{{{body}}}{suffix}"
    assert sg.parse_verdict(text, num_steps=num_steps) == k
    assert sg.parse_verdicts([text], num_steps=[num_steps]) == [k]


# --------------------------------------------------------------------------------------------------
# PRM scores


def test_first_error_from_scores():
    assert sg.first_error_from_scores([0.9, 0.8, 0.3, 0.1]) == 2
    assert sg.first_error_from_scores(np.array([0.9, 0.5], dtype=np.float32)) == -1
    assert sg.first_error_from_scores([0.9, 0.7], threshold=0.8) == 1
    assert sg.first_error_from_scores([]) == -1
    assert type(sg.first_error_from_scores([0.1])) is int


# --------------------------------------------------------------------------------------------------
# Bad input: TypeError / ValueError naming the argument


def _raises(exc, name, fn):
    with pytest.raises(exc) as info:
        fn()
    assert name in str(info.value), f"message does not name {name!r}: {info.value}"


BAD = [
    ("text-None", TypeError, "text", lambda: sg.split_steps(None)),
    ("text-bytes", TypeError, "text", lambda: sg.split_steps(b"a\n\nb")),
    ("text-int", TypeError, "text", lambda: sg.step_spans(3)),
    ("delimiter-empty", ValueError, "delimiter", lambda: sg.split_steps("a", delimiter="")),
    ("delimiter-None", TypeError, "delimiter", lambda: sg.split_steps("a", delimiter=None)),
    ("delimiter-surrogate", ValueError, "delimiter", lambda: sg.split_steps("a", delimiter="\udc80")),
    ("texts-str", TypeError, "texts", lambda: sg.split_steps_batch("a\n\nb")),
    ("texts-int", TypeError, "texts", lambda: sg.split_steps_batch(3)),
    ("texts-item", TypeError, "texts[1]", lambda: sg.split_steps_batch(["a", None])),
    ("batch-delimiter-empty", ValueError, "delimiter", lambda: sg.split_steps_batch(["a"], delimiter="")),
    ("judge_text-None", TypeError, "judge_text", lambda: sg.parse_verdict(None)),
    ("judge_text-bytes", TypeError, "judge_text", lambda: sg.parse_verdict(b"\\boxed{1}")),
    ("num_steps-negative", ValueError, "num_steps", lambda: sg.parse_verdict("\\boxed{1}", num_steps=-1)),
    ("num_steps-float", TypeError, "num_steps", lambda: sg.parse_verdict("\\boxed{1}", num_steps=2.0)),
    ("num_steps-bool", TypeError, "num_steps", lambda: sg.parse_verdict("\\boxed{1}", num_steps=True)),
    ("judge_texts-str", TypeError, "judge_texts", lambda: sg.parse_verdicts("\\boxed{1}")),
    ("judge_texts-item", TypeError, "judge_texts[0]", lambda: sg.parse_verdicts([b"x", "y"])),
    ("batch-num_steps-short", ValueError, "num_steps", lambda: sg.parse_verdicts(["a", "b"], num_steps=[1])),
    ("batch-num_steps-negative", ValueError, "num_steps", lambda: sg.parse_verdicts(["a"], num_steps=[-3])),
    ("batch-num_steps-2d", ValueError, "num_steps", lambda: sg.parse_verdicts(["a"], num_steps=[[1]])),
    ("batch-num_steps-str", TypeError, "num_steps", lambda: sg.parse_verdicts(["a"], num_steps=["1"])),
    ("scores-nan", ValueError, "scores", lambda: sg.first_error_from_scores([0.9, float("nan")])),
    ("scores-2d", ValueError, "scores", lambda: sg.first_error_from_scores([[0.9]])),
    ("scores-str", TypeError, "scores", lambda: sg.first_error_from_scores(["0.9"])),
    ("scores-None", TypeError, "scores", lambda: sg.first_error_from_scores(None)),
    ("threshold-nan", ValueError, "threshold", lambda: sg.first_error_from_scores([0.9], threshold=NAN)),
    ("threshold-str", TypeError, "threshold", lambda: sg.first_error_from_scores([0.9], threshold="0.5")),
]


@pytest.mark.parametrize("exc, name, fn", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input(exc, name, fn):
    _raises(exc, name, fn)


@settings(max_examples=100, deadline=None)
@given(value=st.integers() | st.floats() | st.binary() | st.none() | st.lists(st.text(), max_size=2))
def test_non_str_raises_type_error(value):
    for fn in (sg.split_steps, sg.step_spans, sg.parse_verdict):
        with pytest.raises(TypeError):
            fn(value)


# --------------------------------------------------------------------------------------------------
# End to end: judge answers -> verdicts -> SGPO rewards


def test_verdicts_feed_sgpo_rewards():
    responses = ["a\n\nb\n\nc\n\nd", "a\n\nb", "one step", "a\n\nb\n\nc\n\nd"]
    answers = ["\\boxed{2}", "\\boxed{-1}", "I am not sure.", "\\boxed{7}"]
    num_steps = [len(s) for s in sg.split_steps_batch(responses)]
    verdicts = sg.parse_verdicts(answers, num_steps=num_steps)
    assert verdicts == [2, -1, None, None]
    first_error = [-2 if k is None else k for k in verdicts]
    out = sg.sgpo_rewards(np.zeros(4), first_error, num_steps, group_size=2)
    np.testing.assert_allclose(out.credit, [0.5, 1.0, 0.0, 0.0])
    assert out.stats["diversified_groups"] == 1 and out.stats["judge_missing_groups"] == 1
