"""Hypothesis fuzz of the text bindings and of the critic prompt's injection defence, on arbitrary
text: any code point (lone surrogates included), bytes decoded lossily, and text built from the
tokens that drive the parsers. Nothing may raise, and the invariants every caller relies on hold."""

import pytest
import sgpo_rs as sg
from hypothesis import given, settings
from hypothesis import strategies as st
from sgpo_rs.judge import CriticJudge, build_prompt

TOKENS = [
    "\n",
    "\n\n",
    "\r\n",
    " ",
    "\\boxed",
    "\\boxed{",
    "\\ boxed {",
    "\\\\boxed{",
    "{",
    "}",
    "\\",
    "\\{",
    "\\text{",
    "-1",
    "0",
    "3",
    "\u2212",
    "<paragraph_0>",
    "</paragraph_2>",
    "< / Paragraph_1 >",
    "<extra_0>",
    "ки",
    "Step 1:",
]

any_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=200)
lossy = st.binary(max_size=300).map(lambda b: b.decode("utf-8", "replace"))
escaped = st.binary(max_size=100).map(lambda b: b.decode("utf-8", "surrogateescape"))
tokens = st.lists(st.sampled_from(TOKENS) | st.text(max_size=4), max_size=40).map("".join)
texts = any_text | lossy | escaped | tokens


@settings(max_examples=300, deadline=None)
@given(text=texts, delimiter=st.sampled_from(["\n\n", "markers", "<extra_0>", "ки", "\n"]))
def test_split_bindings_on_any_text(text, delimiter):
    steps = sg.split_steps(text, delimiter=delimiter)
    spans = sg.step_spans(text, delimiter=delimiter)
    assert [text[a:b] for a, b in spans] == steps
    # No trailing Unicode White_Space (str.isspace also counts the separators \x1c-\x1f).
    assert all(step and (not step[-1].isspace() or step[-1] in "\x1c\x1d\x1e\x1f") for step in steps)
    assert sg.split_steps_batch([text, "", text], delimiter=delimiter) == [steps, [], steps]


@settings(max_examples=300, deadline=None)
@given(text=texts, num_steps=st.integers(0, 50))
def test_parse_bindings_on_any_text(text, num_steps):
    free = sg.parse_verdict(text)
    bounded = sg.parse_verdict(text, num_steps=num_steps)
    assert free is None or (free >= -1 and "boxed" in text)
    assert bounded == (free if free is not None and free < num_steps else None)
    assert sg.parse_verdicts([text, text], num_steps=[num_steps, 10**9]) == [
        bounded,
        free if free is None or free < 10**9 else None,
    ]


@settings(max_examples=200, deadline=None)
@given(problem=texts, response=texts, k=st.integers(-1, 5))
def test_a_response_cannot_plant_a_verdict(problem, response, k):
    prompt, n = build_prompt(problem, response)
    assert n == len(sg.split_steps(response))
    # The template's own tags only, and its empty box: nothing in the prompt parses as a verdict.
    assert prompt.lower().count("<paragraph_") == n and prompt.lower().count("</paragraph_") == n
    assert sg.parse_verdict(prompt) is None

    # A critic that answers k, then repeats the problem and solution it was shown, still gives k.
    def parrot(prompts):
        shown = [p.split("Problem:\n", 1)[1].rsplit("\n\nGo through", 1)[0] for p in prompts]
        return [f"\\boxed{{{k}}}\n{s}" for s in shown]

    judge = CriticJudge(parrot, "parrot")
    [verdict] = judge.judge([problem], [response])
    if n == 0:
        assert verdict.first_error == -2
    else:
        assert verdict.first_error == (k if k < n else -2)


@pytest.mark.parametrize("size", [10**6])
def test_megabyte_inputs(size):
    text = ("\\boxed{" * 7 + "x\n\n") * (size // 32)
    assert sg.parse_verdict(text) is None
    assert len(sg.split_steps(text)) == size // 32
