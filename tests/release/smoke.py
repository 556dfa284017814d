"""Smoke test of an installed sgpo-rs: every public function once, on small inputs with values
checked by hand or by numpy, in a fresh environment (numpy is the only dependency). Run by
``tests/release/run.sh`` against the release wheel and the sdist; exits non-zero on any failure.

    python tests/release/smoke.py
"""

from __future__ import annotations

import importlib.resources
import math
import os
import sys

import numpy as np
import sgpo_rs as sg


def close(got, want, tol=1e-6, what=""):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape or not np.allclose(got, want, rtol=tol, atol=tol, equal_nan=True):
        raise AssertionError(f"{what}: got {got}, expected {want}")


def main() -> None:
    print(
        f"sgpo_rs {sg.__version__} from {os.path.dirname(sg.__file__)}, numpy {np.__version__}, "
        f"Python {sys.version.split()[0]}"
    )
    package = importlib.resources.files("sgpo_rs")
    assert package.joinpath("py.typed").is_file() and package.joinpath("_core.pyi").is_file(), "typing files"

    # The reward rule, both credit rules, and the advantages.
    rewards = np.array([0.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    out = sg.sgpo_rewards(rewards, np.array([0, 1, 3, -1, -2, 1]), np.array([4, 4, 4, 4, 0, 2]), group_size=2)
    close(out.rewards, [0.0, 0.125, 0.375, 0.5, 1.0, 0.0], what="prefix rule")
    paper = sg.sgpo_rewards(np.zeros(2), np.array([0, -1]), np.array([2, 2]), group_size=2, preset="paper")
    close(paper.rewards, [1 / (1 + math.exp(2.5)), 1 / (1 + math.exp(-2.5))], what="logistic rule")
    adv = sg.group_advantages(out.rewards, group_size=2)
    r = out.rewards.reshape(-1, 2).astype(np.float64)
    ref = (r - r.mean(1, keepdims=True)) / (r.std(1, ddof=1, keepdims=True) + 1e-4)
    close(adv, ref.reshape(-1), tol=1e-5, what="group_advantages")
    mask = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0], [1, 1, 1], [1, 0, 1], [0, 1, 0]], dtype=bool)
    close(sg.token_advantages(adv, mask), adv[:, None] * mask, what="token_advantages")
    close(sg.length_scores(["ab\n\ncd"], [1]), [0.5], what="length_scores")

    # The loss: TRL's dapo at ratio 1 is -mean(A) over the unmasked tokens.
    logp = np.full((2, 3), -1.0, dtype=np.float32)
    loss = sg.policy_loss(logp, logp.copy(), np.array([1.0, -0.5], dtype=np.float32), mask[:2])
    close(loss.loss, -(1.0 * 2 - 0.5 * 1) / 3, what="policy_loss")
    assert loss.grad.shape == (2, 3) and loss.grad[0, 2] == 0.0

    # The fused log-softmax and its backward against numpy.
    logits = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], dtype=np.float32)
    targets = np.array([1, 2])
    z = logits.astype(np.float64)
    lsm = z - np.log(np.exp(z).sum(1, keepdims=True))
    logp_t, entropy = sg.selective_logprobs(logits, targets, entropy=True)
    close(logp_t, lsm[[0, 1], targets], what="selective_logprobs")
    close(entropy, -(np.exp(lsm) * lsm).sum(1), what="entropy")
    d = sg.selective_logprobs_backward(logits, targets, np.ones(2, dtype=np.float32))
    onehot = np.eye(3)[targets]
    close(d, onehot - np.exp(lsm), what="selective_logprobs_backward")

    # Text.
    assert sg.split_steps("a\n\nb") == ["a", "b"] and sg.step_spans("a\n\nb") == [(0, 1), (3, 4)]
    assert sg.split_steps_batch(["x", "y\n\nz"]) == [["x"], ["y", "z"]]
    assert sg.parse_verdict("so \\boxed{1}", num_steps=3) == 1 and sg.parse_verdicts(["\\boxed{-1}"]) == [-1]
    assert sg.first_error_from_scores([0.9, 0.2, 0.8]) == 1

    # A judge, and the credit options.
    from sgpo_rs.credit import CreditOptions
    from sgpo_rs.judge import RuleJudge

    verdict = RuleJudge().judge(["What is 2 + 3?"], ["2 + 3 = 6\n\nSo 6."])[0]
    assert verdict.first_error in (-2, -1, 0), verdict
    assert CreditOptions.resolve("paper").credit_scale == 1.0

    # Bad input raises, naming the argument.
    try:
        sg.group_advantages(np.array([0.0, np.inf]), group_size=2)
    except ValueError as error:
        assert "rewards" in str(error)
    else:
        raise AssertionError("an infinite reward was accepted")
    print("smoke test passed")


if __name__ == "__main__":
    main()
