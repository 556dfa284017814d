"""sgpo_rewards against the float64 reference of the SGPO prefix-credit rule.

Tolerance: float32 rewards / credit vs the float64 reference ``rtol=1e-6, atol=1e-6 * max(1, |ref|)``;
booleans and the integer stats exactly; ``mean_credit`` (a float64 statistic) ``rtol=1e-6``.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref
import sgpo_rs as sg

STAT_KEYS = ("num_groups", "all_negative_groups", "diversified_groups", "judge_missing_groups")


def _compare(out, expect):
    assert out.rewards.dtype == np.float32 and out.credit.dtype == np.float32
    assert out.all_negative.dtype == np.bool_ and out.diversified.dtype == np.bool_
    ref.assert_close(out.rewards, expect["rewards"], what="rewards")
    np.testing.assert_array_equal(np.isnan(out.rewards), np.isnan(expect["rewards"]))
    ref.assert_close(out.credit, expect["credit"], what="credit")
    np.testing.assert_array_equal(out.all_negative, expect["all_negative"])
    np.testing.assert_array_equal(out.diversified, expect["diversified"])
    for key in STAT_KEYS:
        assert out.stats[key] == expect["stats"][key], key
    np.testing.assert_allclose(out.stats["mean_credit"], expect["stats"]["mean_credit"], rtol=1e-6, atol=1e-7)
    groups = max(expect["stats"]["num_groups"], 1)
    metrics = out.metrics()
    assert set(metrics) == {
        "sgpo/all_negative_frac",
        "sgpo/credited_frac",
        "sgpo/diversified_frac",
        "sgpo/judge_missing_frac",
        "sgpo/mean_credit",
        "sgpo/outcome_reward_mean",
    }
    np.testing.assert_allclose(
        metrics["sgpo/all_negative_frac"], expect["stats"]["all_negative_groups"] / groups
    )
    np.testing.assert_allclose(metrics["sgpo/credited_frac"], expect["stats"]["diversified_groups"] / groups)
    # Only credited groups whose rewards now differ count as diversified.
    np.testing.assert_allclose(metrics["sgpo/diversified_frac"], expect["stats"]["varied_groups"] / groups)
    np.testing.assert_allclose(
        metrics["sgpo/outcome_reward_mean"],
        expect["stats"]["outcome_reward_mean"],
        rtol=1e-12,
        equal_nan=True,
    )
    np.testing.assert_allclose(
        metrics["sgpo/judge_missing_frac"], expect["stats"]["judge_missing_groups"] / groups
    )


def _layout(rng, n_groups, size, kind):
    if kind == "consecutive":
        return n_groups * size, dict(group_size=size)
    sizes = rng.integers(1, 2 * size + 1, size=n_groups)
    ids = np.concatenate([[g] * s for g, s in enumerate(sizes)])
    rng.shuffle(ids)
    if kind == "int_ids":
        return len(ids), dict(group_ids=ids[::-1] * 3)
    return len(ids), dict(group_ids=np.array([f"prompt-{(g * 7919) % 1009}" for g in ids]))


def _verdicts(rng, n, p_missing):
    num_steps = rng.integers(1, 13, size=n)
    first_error = rng.integers(0, num_steps)  # a wrong step
    u = rng.random(n)
    first_error[u < 0.2] = -1  # no wrong step found
    missing = u > 1 - p_missing
    first_error[missing] = -2
    num_steps[missing & (rng.random(n) < 0.5)] = 0  # unjudged rows may have no steps
    return first_error, num_steps


def _outcomes(rng, n, kw, nan_frac):
    """Rewards where about half of the groups are all wrong."""
    rewards = np.zeros(n)
    gid = (
        np.arange(n) // kw["group_size"]
        if "group_size" in kw
        else np.unique(kw["group_ids"], return_inverse=True)[1]
    )
    solved = rng.random(gid.max() + 1) < 0.5
    rewards[solved[gid] & (rng.random(n) < 0.5)] = 1.0
    rewards -= 0.25 * (rng.random(n) < 0.1)  # a format penalty: still incorrect
    rewards[rng.random(n) < nan_frac] = np.nan
    return rewards


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("layout", ["consecutive", "int_ids", "str_ids"])
@pytest.mark.parametrize("size", [1, 2, 4, 8])
@pytest.mark.parametrize("mode", ["all_negative", "all_incorrect"])
def test_first_error_verdicts_match_reference(mode, size, layout, seed):
    rng = np.random.default_rng([seed, size, len(layout), len(mode)])
    n, kw = _layout(rng, int(rng.integers(1, 30)), size, layout)
    rewards = _outcomes(rng, n, kw, nan_frac=(0.0, 0.0, 0.1, 0.3, 0.05)[seed])
    first_error, num_steps = _verdicts(rng, n, p_missing=(0.0, 0.05, 0.2, 0.0, 0.5)[seed])
    credit_scale = (0.5, 0.1, 0.0, 0.2, 1.0)[seed]
    correct = None if seed % 2 == 0 else (rng.random(n) < 0.3)
    args = dict(correct=correct, credit_scale=credit_scale, mode=mode, **kw)
    out = sg.sgpo_rewards(rewards, first_error, num_steps, **args)
    _compare(out, ref.sgpo_rewards(rewards, first_error, num_steps, **args))


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("mode", ["all_negative", "all_incorrect"])
def test_credit_array_matches_reference(mode, seed):
    rng = np.random.default_rng([seed, len(mode), 99])
    n, kw = _layout(rng, int(rng.integers(1, 40)), 4, ("consecutive", "str_ids")[seed % 2])
    rewards = _outcomes(rng, n, kw, nan_frac=0.1 * (seed % 3))
    credit = rng.random(n)
    credit[rng.random(n) < 0.1] = 0.0
    credit[rng.random(n) < 0.1] = 1.0
    credit[rng.random(n) < 0.15 * (seed % 2)] = np.nan  # not judged
    args = dict(credit=credit, mode=mode, credit_scale=0.3, **kw)
    _compare(sg.sgpo_rewards(rewards, **args), ref.sgpo_rewards(rewards, **args))
    # list input for credit works too
    _compare(sg.sgpo_rewards(rewards, **dict(args, credit=list(credit))), ref.sgpo_rewards(rewards, **args))


def test_prefix_credit_values():
    """c = first_error / num_steps, 1 for -1; r' = r + credit_scale * c in an all-wrong group."""
    rewards = np.zeros(4)
    first_error = np.array([0, 2, -1, 3])
    num_steps = np.array([4, 4, 5, 6])
    out = sg.sgpo_rewards(rewards, first_error, num_steps, group_size=4)
    np.testing.assert_array_equal(out.credit, np.array([0.0, 0.5, 1.0, 0.5], np.float32))
    np.testing.assert_array_equal(out.rewards, np.array([0.0, 0.25, 0.5, 0.25], np.float32))
    assert out.diversified.all() and out.all_negative.all()
    assert out.stats["diversified_groups"] == 1 and out.stats["num_groups"] == 1
    np.testing.assert_allclose(out.stats["mean_credit"], 0.5)
    # the diversified group now has non-zero advantages (the point of SGPO)
    assert np.any(sg.group_advantages(out.rewards, group_size=4) != 0)


def test_groups_with_a_correct_answer_are_left_alone():
    rewards = np.array([1.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    first_error = np.array([-1, 1, 0, 1, -1, 2])
    num_steps = np.array([3, 3, 2, 2, 3, 4])
    out = sg.sgpo_rewards(rewards, first_error, num_steps, group_size=3)
    np.testing.assert_array_equal(out.rewards, np.array([1.0, 0.0, 0.0, 0.25, 0.5, 0.25], np.float32))
    np.testing.assert_array_equal(out.diversified, [False, False, False, True, True, True])
    np.testing.assert_array_equal(out.all_negative, [False, False, False, True, True, True])
    # all_incorrect credits the wrong rows of the mixed group too
    out = sg.sgpo_rewards(
        rewards, first_error, num_steps, group_size=3, mode="all_incorrect", credit_scale=0.4
    )
    np.testing.assert_allclose(out.rewards, [1.0, 0.4 / 3, 0.0, 0.2, 0.4, 0.2], rtol=1e-6)
    np.testing.assert_array_equal(out.diversified, [False, True, True, True, True, True])
    assert out.stats["diversified_groups"] == 2


def test_unjudged_rows_keep_the_group_plain():
    rewards = np.zeros(6)
    first_error = np.array([1, -2, 0, 0, 1, -1])
    num_steps = np.array([2, 0, 2, 2, 2, 1])
    out = sg.sgpo_rewards(rewards, first_error, num_steps, group_size=3)
    np.testing.assert_array_equal(out.rewards[:3], np.zeros(3, np.float32))
    assert not out.diversified[:3].any() and out.diversified[3:].all()
    assert out.stats["judge_missing_groups"] == 1 and out.stats["diversified_groups"] == 1
    np.testing.assert_array_equal(out.credit, np.array([0.5, 0.0, 0.0, 0.0, 0.5, 1.0], np.float32))


def test_unscorable_rows():
    """NaN rewards stay NaN, get no credit and do not decide the group."""
    nan = np.nan
    rewards = np.array([0.0, nan, 0.0, nan, 1.0, 0.0])
    first_error = np.array([1, -2, -1, 0, -1, 0])
    num_steps = np.array([2, 0, 3, 2, 2, 3])
    out = sg.sgpo_rewards(rewards, first_error, num_steps, group_size=3)
    assert np.isnan(out.rewards[1]) and np.isnan(out.rewards[3])
    np.testing.assert_array_equal(out.diversified, [True, False, True, False, False, False])
    np.testing.assert_allclose(out.rewards[[0, 2]], [0.25, 0.5])
    # a NaN row marked correct does not make its group "solved"
    correct = np.array([False, True, False, False, False, False])
    out2 = sg.sgpo_rewards(rewards, first_error, num_steps, group_size=3, correct=correct)
    np.testing.assert_array_equal(out2.diversified[:3], [True, False, True])
    _compare(out2, ref.sgpo_rewards(rewards, first_error, num_steps, group_size=3, correct=correct))


def test_explicit_correct_overrides_the_sign_rule():
    rewards = np.array([0.8, 0.6, 0.2, 0.0])
    first_error = np.array([0, 1, -1, 0])
    num_steps = np.array([2, 2, 1, 4])
    out = sg.sgpo_rewards(rewards, first_error, num_steps, group_size=2, correct=[False, False, True, False])
    np.testing.assert_allclose(out.rewards, [0.8, 0.85, 0.2, 0.0], rtol=1e-6)
    np.testing.assert_array_equal(out.all_negative, [True, True, False, False])
    # int 0/1 correctness is accepted
    out2 = sg.sgpo_rewards(rewards, first_error, num_steps, group_size=2, correct=np.array([0, 0, 1, 0]))
    np.testing.assert_array_equal(out2.rewards, out.rewards)


def test_rows_without_changes_are_exact():
    """Rows that get no credit carry their reward through unchanged (as float32)."""
    rng = np.random.default_rng(4)
    rewards = rng.normal(size=64)
    first_error, num_steps = _verdicts(rng, 64, 0.3)
    out = sg.sgpo_rewards(rewards, first_error, num_steps, group_size=8)
    keep = ~out.diversified
    np.testing.assert_array_equal(out.rewards[keep], rewards[keep].astype(np.float32))


def test_singleton_and_single_row_batches():
    out = sg.sgpo_rewards([0.0], [1], [4], group_size=1)
    np.testing.assert_allclose(out.rewards, [0.125])
    out = sg.sgpo_rewards([0.0], [-2], [0], group_ids=["a"])
    np.testing.assert_array_equal(out.rewards, [0.0])
    assert out.stats["judge_missing_groups"] == 1
    out = sg.sgpo_rewards([1.0], [-1], [1], group_size=1)
    np.testing.assert_array_equal(out.rewards, [1.0])
    assert out.stats["all_negative_groups"] == 0


def test_all_unscorable_group():
    """(Choice, reported as a spec ambiguity:) a group whose rows are all unscorable is not counted
    as all-negative and is neither diversified nor judge-missing."""
    out = sg.sgpo_rewards([np.nan, np.nan], [0, -2], [3, 0], group_size=2)
    assert np.isnan(out.rewards).all()
    assert not out.all_negative.any() and not out.diversified.any()
    assert out.stats["all_negative_groups"] == 0 and out.stats["judge_missing_groups"] == 0


def test_inputs_accept_lists_and_other_int_types():
    rewards = [0.0, 0.0, 1.0, 0.0]
    args = dict(group_size=2)
    base = sg.sgpo_rewards(np.array(rewards), np.array([0, 1]).repeat(2), np.array([2, 2, 2, 2]), **args)
    for fe, ns in (
        ([0, 0, 1, 1], [2, 2, 2, 2]),
        (np.array([0, 0, 1, 1], np.int32), np.array([2, 2, 2, 2], np.uint8)),
        (np.array([0.0, 0.0, 1.0, 1.0]), np.array([2.0, 2.0, 2.0, 2.0])),  # integral floats
    ):
        out = sg.sgpo_rewards(rewards, fe, ns, **args)
        np.testing.assert_array_equal(out.rewards, base.rewards)
        np.testing.assert_array_equal(out.credit, base.credit)


def test_repeated_calls_are_bit_identical():
    rng = np.random.default_rng(8)
    n, kw = _layout(rng, 500, 8, "str_ids")
    rewards = _outcomes(rng, n, kw, 0.05)
    first_error, num_steps = _verdicts(rng, n, 0.1)
    first = sg.sgpo_rewards(rewards, first_error, num_steps, **kw)
    for _ in range(3):
        again = sg.sgpo_rewards(rewards, first_error, num_steps, **kw)
        np.testing.assert_array_equal(again.rewards, first.rewards)
        np.testing.assert_array_equal(again.credit, first.credit)
        assert again.stats == first.stats
