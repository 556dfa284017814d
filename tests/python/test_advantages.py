"""group_advantages and token_advantages against the float64 reference, and against transcriptions of
TRL 1.16's advantage code (torch nanmean / unbiased nanstd / nan_to_num) and verl's
compute_grpo_outcome_advantage (defaultdict of uids, torch.std, singleton mean 0 std 1).

Tolerance: float32 outputs vs float64 references, ``rtol=1e-6, atol=1e-6 * max(1, max|ref|)``.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import reference as ref
import sgpo_rs as sg
import torch

SCALES = ("group", "batch", "none")


def _rewards(rng, n, kind, nan_frac):
    if kind == "binary":
        r = rng.integers(0, 2, size=n).astype(np.float64)
    elif kind == "normal":
        r = rng.normal(size=n) * 3.0
    elif kind == "small_spread":  # judge-diversified rewards: tiny spreads on a large offset
        r = 1.0 + 1e-5 * rng.integers(0, 4, size=n)
    elif kind == "sgpo":  # wrong answers (0) plus 0.5 * prefix credit, a few right ones (1)
        r = np.where(rng.random(n) < 0.2, 1.0, 0.5 * rng.integers(0, 5, size=n) / 5)
    else:
        raise ValueError(kind)
    r[rng.random(n) < nan_frac] = np.nan
    return r


def _layout(rng, n_groups, size, kind):
    """``(n, kwargs)``: consecutive groups, int ids, or verl-style unsorted uid strings of varying
    sizes (including singletons)."""
    if kind == "consecutive":
        return n_groups * size, dict(group_size=size)
    sizes = rng.integers(1, 2 * size + 1, size=n_groups)
    ids = np.concatenate([[g] * s for g, s in enumerate(sizes)])
    rng.shuffle(ids)
    if kind == "int_ids":
        return len(ids), dict(group_ids=ids * 7 - 3)
    uids = [f"uid-{rng.integers(1 << 30):08x}-{g}" for g in range(n_groups)]
    return len(ids), dict(group_ids=[uids[g] for g in ids])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("layout", ["consecutive", "int_ids", "str_ids"])
@pytest.mark.parametrize("kind", ["binary", "normal", "small_spread", "sgpo"])
@pytest.mark.parametrize("size", [1, 2, 4, 16])
@pytest.mark.parametrize("scale", SCALES)
def test_group_advantages_match_reference(scale, size, kind, layout, seed):
    rng = np.random.default_rng([seed, size, SCALES.index(scale), len(kind), len(layout)])
    n_groups = int(rng.integers(1, 40))
    n, kw = _layout(rng, n_groups, size, layout)
    r = _rewards(rng, n, kind, nan_frac=(0.0, 0.1, 0.3, 0.6)[seed])
    singletons = ("zero", "unit") if scale != "batch" else ("zero",)
    for singleton in singletons:
        for eps in (1e-4, 1e-6):
            out = sg.group_advantages(r, scale=scale, eps=eps, singleton=singleton, **kw)
            assert out.dtype == np.float32 and out.shape == (n,)
            assert np.all(np.isfinite(out))
            expect = ref.group_advantages(r, scale=scale, eps=eps, singleton=singleton, **kw)
            ref.assert_close(out, expect, what=f"{singleton} eps={eps}")
            assert np.all(out[np.isnan(r)] == 0.0)


def _trl_advantages(rewards, num_generations, scale):
    """TRL 1.16 `_generate_and_score_completions` ("sum_then_normalize"), in float64 torch."""
    rewards = torch.tensor(rewards, dtype=torch.float64)

    def nanstd(t, dim=None):
        mean = torch.nanmean(t, dim=dim, keepdim=True)
        var = torch.nanmean((t - mean) ** 2, dim=dim, keepdim=True)
        count = torch.sum(~torch.isnan(t), dim=dim, keepdim=True)
        corr = torch.where(count > 1, count / (count - 1), torch.full_like(var, float("nan")))
        std = torch.sqrt(var * corr)
        return std.squeeze(dim) if dim is not None else std.squeeze()

    mean = torch.nanmean(rewards.view(-1, num_generations), dim=1).repeat_interleave(num_generations)
    if scale in ("group", "none"):
        if num_generations > 1:
            std = nanstd(rewards.view(-1, num_generations), dim=1).repeat_interleave(num_generations)
        else:
            std = torch.zeros_like(rewards)
    else:
        std = nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    adv = rewards - mean
    if scale != "none":
        adv = adv / (std + 1e-4)
    return torch.nan_to_num(adv, nan=0.0).numpy()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("num_generations", [1, 2, 3, 8])
@pytest.mark.parametrize("scale", SCALES)
def test_group_advantages_match_trl_transcription(scale, num_generations, seed):
    rng = np.random.default_rng([seed, num_generations, SCALES.index(scale)])
    n = num_generations * int(rng.integers(1, 20))
    r = _rewards(rng, n, ("binary", "normal", "sgpo")[seed % 3], nan_frac=0.25 if seed >= 3 else 0.0)
    out = sg.group_advantages(r, group_size=num_generations, scale=scale)
    ref.assert_close(out, _trl_advantages(r, num_generations, scale))


def _verl_advantages(scores, index, epsilon=1e-6, norm_adv_by_std_in_grpo=True):
    """verl `compute_grpo_outcome_advantage` (the per-row scalar part), float64 torch."""
    scores = torch.tensor(scores, dtype=torch.float64)
    id2score, id2mean, id2std = defaultdict(list), {}, {}
    for i in range(len(scores)):
        id2score[index[i]].append(scores[i])
    for idx, vals in id2score.items():
        if len(vals) == 1:
            id2mean[idx], id2std[idx] = torch.tensor(0.0), torch.tensor(1.0)
        else:
            t = torch.stack(vals)
            id2mean[idx], id2std[idx] = torch.mean(t), torch.std(t)
    out = scores.clone()
    for i in range(len(scores)):
        if norm_adv_by_std_in_grpo:
            out[i] = (scores[i] - id2mean[index[i]]) / (id2std[index[i]] + epsilon)
        else:
            out[i] = scores[i] - id2mean[index[i]]
    return out.numpy()


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("norm", [True, False])
def test_group_advantages_match_verl_transcription(norm, seed):
    rng = np.random.default_rng([seed, norm])
    n, kw = _layout(rng, int(rng.integers(1, 30)), 5, "str_ids")
    r = _rewards(rng, n, ("binary", "normal", "small_spread", "sgpo")[seed % 4], nan_frac=0.0)
    out = sg.group_advantages(r, eps=1e-6, singleton="unit", scale="group" if norm else "none", **kw)
    ref.assert_close(out, _verl_advantages(r, kw["group_ids"], 1e-6, norm))


@pytest.mark.parametrize("offset", [0.0, 1.0, 1000.0])
def test_low_variance_group_keeps_its_scale(offset):
    """verl #6348: rewards [1.0, 1.00001] with eps 1e-6 give +-0.6195, not +-0.005 (a one-pass
    E[x^2] - E[x]^2 variance loses it). The same spread on other offsets gives the same answer up to
    the offset's own rounding of the 1e-5 gap."""
    r = np.array([offset, offset + 1e-5])
    for kw in (dict(group_size=2), dict(group_ids=["q", "q"])):
        out = sg.group_advantages(r, eps=1e-6, **kw)
        expect = ref.group_advantages(r, eps=1e-6, **kw)
        ref.assert_close(out, expect)
        gap = r[1] - r[0]
        a = (gap / 2) / (gap / np.sqrt(2) + 1e-6)
        np.testing.assert_allclose(out, [-a, a], rtol=1e-6)
        np.testing.assert_allclose(np.abs(out), 0.61950, atol=5e-5)
    # verl's exact setting
    out = sg.group_advantages([1.0, 1.00001], group_ids=["a", "a"], eps=1e-6, singleton="unit")
    np.testing.assert_allclose(out, [-0.6194967, 0.6194967], rtol=1e-6)


def test_low_variance_large_groups():
    """A group of 64 with spreads of 1e-7 around 1: the centred two-pass variance keeps the shape."""
    rng = np.random.default_rng(1)
    r = 1.0 + 1e-7 * rng.normal(size=(8, 64))
    out = sg.group_advantages(r.reshape(-1), group_size=64, eps=1e-9)
    ref.assert_close(out, ref.group_advantages(r.reshape(-1), group_size=64, eps=1e-9))
    s = r.std(axis=1, ddof=1)
    np.testing.assert_allclose(out.reshape(8, 64).std(axis=1, ddof=1), s / (s + 1e-9), rtol=1e-5)


def test_singletons_and_tiny_batches():
    # B = 1
    for singleton, expect in (("zero", 0.0), ("unit", 0.7 / (1 + 1e-4))):
        for kw in (dict(group_size=1), dict(group_ids=["only"]), dict(group_ids=[5])):
            out = sg.group_advantages([0.7], singleton=singleton, **kw)
            ref.assert_close(out, [expect])
    # every row its own group
    r = np.array([0.3, -2.0, 5.0, np.nan])
    ref.assert_close(sg.group_advantages(r, group_size=1), np.zeros(4))
    ref.assert_close(
        sg.group_advantages(r, group_size=1, singleton="unit", eps=1e-6), np.nan_to_num(r) / (1 + 1e-6)
    )
    ref.assert_close(sg.group_advantages(r, group_size=1, singleton="unit", scale="none"), np.nan_to_num(r))
    # a group with one scorable row is a singleton for both rules
    r = np.array([np.nan, 2.0, 1.0, 3.0])
    a = 1.0 / (np.sqrt(2.0) + 1e-4)  # [1, 3]: mean 2, unbiased std sqrt(2)
    ref.assert_close(sg.group_advantages(r, group_size=2), [0.0, 0.0, -a, a])
    ref.assert_close(sg.group_advantages(r, group_size=2, singleton="unit"), [0.0, 2.0 / 1.0001, -a, a])
    # all-NaN groups and an all-NaN batch
    a = 0.5 / (np.sqrt(0.5) + 1e-4)  # [1, 2]: mean 1.5, unbiased std sqrt(1/2)
    out = sg.group_advantages([np.nan, np.nan, 1.0, 2.0], group_size=2, singleton="unit")
    ref.assert_close(out, [0, 0, -a, a])
    for scale in SCALES:
        ref.assert_close(sg.group_advantages([np.nan] * 4, group_size=2, scale=scale), np.zeros(4))


def test_constant_groups_get_zero():
    r = np.repeat([0.0, 1.0, -3.5, 0.25], 8)
    for scale in SCALES:
        out = sg.group_advantages(r, group_size=8, scale=scale)
        assert np.all(out == 0.0), scale


def test_group_ids_only_equality_matters():
    """Relabelling / reordering rows permutes the advantages accordingly."""
    rng = np.random.default_rng(3)
    n, kw = _layout(rng, 25, 6, "str_ids")
    r = _rewards(rng, n, "normal", 0.1)
    base = sg.group_advantages(r, **kw)
    perm = rng.permutation(n)
    ids = np.asarray(kw["group_ids"])
    shuffled = sg.group_advantages(r[perm], group_ids=ids[perm])
    np.testing.assert_array_equal(shuffled, base[perm])
    renamed = sg.group_advantages(r, group_ids=["x" + s[::-1] for s in ids])
    np.testing.assert_array_equal(renamed, base)
    # consecutive groups == ids 0,0,..,1,1,..
    r = _rewards(rng, 48, "normal", 0.1)
    np.testing.assert_array_equal(
        sg.group_advantages(r, group_size=6), sg.group_advantages(r, group_ids=np.repeat(np.arange(8), 6))
    )


def test_group_advantages_input_kinds():
    """Lists, float32, ints and bools are all rewards; float32 rewards are used exactly."""
    r32 = np.array([0.1, 0.7, 0.2, 0.9], np.float32)
    expect = ref.group_advantages(r32.astype(np.float64), group_size=2)
    ref.assert_close(sg.group_advantages(r32, group_size=2), expect)
    ref.assert_close(sg.group_advantages(list(r32.astype(float)), group_size=2), expect)
    ref.assert_close(
        sg.group_advantages(np.array([0, 1, 1, 1]), group_size=2),
        ref.group_advantages([0, 1, 1, 1], group_size=2),
    )
    ref.assert_close(
        sg.group_advantages(np.array([False, True]), group_size=2), ref.group_advantages([0, 1], group_size=2)
    )


def test_group_advantages_bit_identical_repeats():
    rng = np.random.default_rng(9)
    r = _rewards(rng, 8 * 4096, "sgpo", 0.05)
    first = sg.group_advantages(r, group_size=8)
    for _ in range(3):
        np.testing.assert_array_equal(sg.group_advantages(r, group_size=8), first)
    ids = rng.integers(0, 3000, size=r.size)
    first = sg.group_advantages(r, group_ids=ids, singleton="unit", eps=1e-6)
    np.testing.assert_array_equal(sg.group_advantages(r, group_ids=ids, singleton="unit", eps=1e-6), first)


# --------------------------------------------------------------------------------------------------
# token_advantages
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mask_kind", ref.MASK_KINDS + ("float64",))
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (3, 5), (16, 33), (64, 257), (4, 0)])
def test_token_advantages_match_reference(shape, mask_kind):
    rng = np.random.default_rng([shape[0], shape[1], len(mask_kind)])
    n, L = shape
    a = rng.normal(size=n).astype(np.float32)
    m = ref.make_mask(rng, n, L, mask_kind)
    out = sg.token_advantages(a, m)
    assert out.dtype == np.float32 and out.shape == (n, L)
    ref.assert_close(out, ref.token_advantages(a, m))
    assert np.all(out[np.asarray(m) == 0] == 0.0)


def test_token_advantages_is_verl_output():
    """verl returns `scores.unsqueeze(-1) * response_mask` as the (N, L) advantages."""
    rng = np.random.default_rng(2)
    n, kw = _layout(rng, 12, 4, "str_ids")
    r = _rewards(rng, n, "sgpo", 0.0)
    mask = ref.make_mask(rng, n, 19, "int64")
    out = sg.token_advantages(sg.group_advantages(r, eps=1e-6, singleton="unit", **kw), mask)
    expect = _verl_advantages(r, kw["group_ids"])[:, None] * mask
    ref.assert_close(out, expect)


def test_token_advantages_float64_advantages_and_lists():
    a = np.array([0.1, -2.5, 3.0])
    m = [[1, 1, 0], [0, 0, 0], [1, 0, 1]]
    ref.assert_close(sg.token_advantages(a, m), ref.token_advantages(a, m))
    ref.assert_close(sg.token_advantages(list(a), np.array(m, bool)), ref.token_advantages(a, m))
