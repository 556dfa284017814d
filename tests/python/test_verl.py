"""sgpo_rs.verl against the real verl package: the registered estimators equal verl's GRPO (and
GRPO on SGPO-diversified scores), the trainer glue runs through verl's own ``compute_advantage`` on
a real ``DataProto``, registration is idempotent and loads through verl's plugin hooks.

Tolerance: 2e-6 absolute on advantages of order 1 where the scores are exact in float32 (one
non-zero reward per row, verl's case: verl computes the statistics in float32, we in float64).
With rewards spread over tokens, verl's float32 row sum is off the exact sum by a few ulps, which
a low-variance group amplifies by 1/std; there both are compared with the float64 reference and
ours must be at least as close as verl's."""

import importlib
import os
import subprocess
import sys
import uuid
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")

import sgpo_rs  # noqa: E402
import sgpo_rs.verl as sv  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from sgpo_rs.verl import verdicts  # noqa: E402
from verl import DataProto  # noqa: E402
from verl.trainer.config import AlgoConfig  # noqa: E402

TOL = 2e-6


def batch(rng, n_groups, length, *, uid_kind="uuid", spread=False, sizes=None, binary=True):
    """verl-shaped inputs: float32 rewards at one token per row (or spread), int64 mask with
    interior zeros, shuffled uids, groups of varying size."""
    sizes = sizes if sizes is not None else rng.integers(1, 9, size=n_groups)
    uids = (
        [str(uuid.uuid4()) for _ in range(n_groups)]
        if uid_kind == "uuid"
        else list(range(100, 100 + n_groups))
    )
    index = np.array([u for u, s in zip(uids, sizes) for _ in range(s)], dtype=object)
    n = len(index)
    perm = rng.permutation(n)
    index = index[perm]
    if uid_kind == "int":
        index = index.astype(np.int64)
    lengths = rng.integers(1, length + 1, size=n)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    mask[rng.random(mask.shape) < 0.1] = 0  # tool/observation tokens inside the response
    rewards = np.zeros((n, length), np.float32)
    scores = (rng.random(n) > 0.5).astype(np.float32) if binary else rng.normal(size=n).astype(np.float32)
    if spread:
        rewards[:] = rng.normal(scale=0.01, size=(n, length)).astype(np.float32) * mask
    rewards[np.arange(n), lengths - 1] += scores
    return torch.from_numpy(rewards), torch.from_numpy(mask), index


def reference_grpo(rewards, mask, index, eps=1e-6, norm=True):
    """Independent float64 GRPO: verl's rule, written out."""
    s = rewards.numpy().astype(np.float64).sum(axis=1)
    a = np.zeros_like(s)
    for uid in set(index.tolist()):
        rows = np.flatnonzero(index == uid)
        mean, std = (0.0, 1.0) if len(rows) == 1 else (s[rows].mean(), s[rows].std(ddof=1))
        a[rows] = (s[rows] - mean) / (std + eps) if norm else s[rows] - mean
    return a[:, None] * mask.numpy()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("norm", [True, False])
def test_grpo_rs_equals_verl_grpo(seed, norm):
    rng = np.random.default_rng(seed)
    uid_kind = ["uuid", "int"][seed % 2]
    rewards, mask, index = batch(
        rng, 3 + 7 * seed, [1, 5, 64, 130][seed % 4], uid_kind=uid_kind, spread=seed >= 3
    )
    fn = core_algos.get_adv_estimator_fn("grpo_rs")
    config = (
        OmegaConf.create({"norm_adv_by_std_in_grpo": norm})
        if seed % 2
        else AlgoConfig(norm_adv_by_std_in_grpo=norm)
    )
    ours, returns = fn(token_level_rewards=rewards, response_mask=mask, index=index, config=config)
    theirs, _ = core_algos.compute_grpo_outcome_advantage(rewards, mask, index, norm_adv_by_std_in_grpo=norm)
    assert ours is returns and ours.dtype == torch.float32 and ours.shape == rewards.shape
    ref = reference_grpo(rewards, mask, index, norm=norm)
    if seed < 3:  # one reward per row: scores exact in float32
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=0, atol=TOL)
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-6, atol=1e-6)
    else:
        ours_error = np.abs(ours.numpy() - ref).max()
        assert ours_error <= max(np.abs(theirs.numpy() - ref).max(), TOL), ours_error


def test_low_variance_singletons_bool_and_strided_masks():
    rewards = torch.zeros(5, 4)
    rewards[:, -1] = torch.tensor([1.0, 1.00001, 3.0, 0.5, 0.5])
    index = np.array(["a", "a", "single", "b", "b"], dtype=object)
    attention = torch.ones(5, 10, dtype=torch.int64)
    attention[1, 8] = 0
    for mask in (attention[:, -4:], attention[:, -4:].bool(), attention[:, -4:].float()):
        assert not mask.is_contiguous() or mask.dtype != torch.int64
        ours, _ = sv.compute_grpo_outcome_advantage(rewards, mask, index)
        theirs, _ = core_algos.compute_grpo_outcome_advantage(rewards, mask, index)
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=0, atol=TOL)
    assert abs(ours[1, 0].item() - 0.6195) < 1e-3  # not flattened to 0 by a variance floor
    assert ours[2, 0].item() == pytest.approx(3.0 / (1 + 1e-6))  # singleton: mean 0, std 1
    assert ours[1, 2].item() == 0.0 and ours[3, 0].item() == 0.0


def sgpo_reference_scores(scores, index, first_error, num_steps, credit_scale):
    """The SGPO rule, written out: all-wrong groups with every verdict get s + scale * credit."""
    out = scores.astype(np.float64).copy()
    for uid in set(index.tolist()):
        rows = np.flatnonzero(index == uid)
        if np.any(scores[rows] > 0) or np.any(first_error[rows] < -1):
            continue
        credit = np.where(first_error[rows] == -1, 1.0, first_error[rows] / np.maximum(num_steps[rows], 1))
        out[rows] += credit_scale * credit
    return out.astype(np.float32)


@pytest.mark.parametrize("seed", range(4))
def test_sgpo_equals_verl_grpo_on_diversified_scores(seed):
    rng = np.random.default_rng(100 + seed)
    rewards, mask, index = batch(rng, 12, 40, sizes=rng.integers(2, 6, size=12))
    rewards[rng.random(rewards.shape[0]) < 0.5] = 0.0  # many all-wrong groups
    n = rewards.shape[0]
    num_steps = rng.integers(1, 8, size=n)
    first_error = np.minimum(rng.integers(-1, 8, size=n), num_steps - 1)
    first_error[rng.random(n) < 0.05] = -2  # a few unjudged rows keep their group plain GRPO
    scale = [0.5, 1.0, 0.2, 2.0][seed]
    ours, _ = sv.compute_sgpo_outcome_advantage(
        rewards,
        mask,
        index,
        first_error,
        num_steps,
        credit_scale=scale,
        norm_adv_by_std_in_grpo=seed % 2 == 0,
    )
    scores = rewards.sum(-1).numpy()
    diversified = sgpo_reference_scores(scores, index, first_error, num_steps, scale)
    token = torch.zeros_like(rewards)
    token[:, 0] = torch.from_numpy(diversified)
    theirs, _ = core_algos.compute_grpo_outcome_advantage(
        token, mask, index, norm_adv_by_std_in_grpo=seed % 2 == 0
    )
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=0, atol=TOL)


def data_proto(rng, with_verdicts=True):
    rewards, mask, index = batch(rng, 6, 12, sizes=[4] * 6)
    rewards[torch.from_numpy(np.isin(index, list(dict.fromkeys(index))[:3]))] = 0.0  # 3 all-wrong groups
    n = rewards.shape[0]
    non_tensor = {"uid": index}
    if with_verdicts:
        num_steps = rng.integers(2, 6, size=n)
        non_tensor.update(
            {
                "sgpo_correct": (rewards.sum(-1) > 0).numpy(),
                "sgpo_first_error": np.minimum(rng.integers(-1, 5, size=n), num_steps - 1),
                "sgpo_num_steps": num_steps,
                "sgpo_judged": (rewards.sum(-1) <= 0).numpy(),
            }
        )
    prompt = torch.ones(n, 3, dtype=torch.int64)
    tensors = {
        "token_level_rewards": rewards,
        "token_level_scores": rewards.clone(),
        "response_mask": mask,
        "responses": torch.zeros_like(mask),
        "prompts": prompt,
        "attention_mask": torch.cat([prompt, mask], dim=1),
    }
    return DataProto.from_dict(tensors=tensors, non_tensors=non_tensor)


def sgpo_of(data):
    """``compute_sgpo_outcome_advantage`` on a DataProto's tensors and its ``sgpo_*`` columns."""
    nt = data.non_tensor_batch
    advantages, _ = sv.compute_sgpo_outcome_advantage(
        data.batch["token_level_rewards"],
        data.batch["response_mask"],
        nt["uid"],
        nt["sgpo_first_error"],
        nt["sgpo_num_steps"],
        correct=nt["sgpo_correct"],
    )
    return advantages


def test_legacy_trainer_compute_advantage_runs_sgpo_with_metrics():
    from verl.trainer.ppo import ray_trainer

    config = OmegaConf.create({"norm_adv_by_std_in_grpo": True, "sgpo": {"credit_scale": 0.5}})
    data = data_proto(np.random.default_rng(7))
    out = ray_trainer.compute_advantage(data, "sgpo", config=config)
    nt = data.non_tensor_batch
    expected = sgpo_of(data)
    assert torch.equal(out.batch["advantages"], expected)
    metrics = out.meta_info["sgpo_metrics"]
    assert metrics["sgpo/all_negative_frac"] >= 0.5 and metrics["sgpo/diversified_frac"] > 0
    assert metrics["sgpo/judge_calls"] == nt["sgpo_judged"].sum()
    logged = ray_trainer.compute_data_metrics(batch=out, use_critic=False)
    assert logged["sgpo/diversified_frac"] == metrics["sgpo/diversified_frac"]
    # Other estimators are verl's own, untouched.
    plain = ray_trainer.compute_advantage(data_proto(np.random.default_rng(7)), "grpo")
    assert "sgpo_metrics" not in plain.meta_info


def test_sgpo_without_verdicts_or_with_group_filtering_refuses():
    from verl.trainer.ppo import ray_trainer

    with pytest.raises(RuntimeError, match="no judge verdicts"):
        ray_trainer.compute_advantage(
            data_proto(np.random.default_rng(1), False), "sgpo", config=OmegaConf.create({})
        )
    config = OmegaConf.create({"filter_groups": {"enable": True}})
    with pytest.raises(ValueError, match="filter_groups"):
        ray_trainer.compute_advantage(data_proto(np.random.default_rng(1)), "sgpo", config=config)


def test_v1_trainer_reads_reward_extra_info(monkeypatch):
    pytest.importorskip("transfer_queue")
    from sgpo_rs.verl import trainers
    from verl.trainer.ppo.v1 import PPOTrainerSync, get_trainer_cls
    from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

    cls = get_trainer_cls("sgpo_sync")
    assert issubclass(cls, PPOTrainerSync)
    data = data_proto(np.random.default_rng(3))
    nt = data.non_tensor_batch
    infos = [{k: nt[k][i] for k in verdicts.KEYS if k in nt} for i in range(len(data))]
    keys = [f"{u}_0_0" for u in nt["uid"]]
    monkeypatch.setattr(trainers, "read_reward_extra_info", lambda batch: infos)
    config = OmegaConf.create({"algorithm": {"adv_estimator": "sgpo", "norm_adv_by_std_in_grpo": True}})

    def parent_step(self, batch, metrics):  # the part of verl's step that computes advantages
        stripped = DataProto.from_dict(
            tensors={k: data.batch[k] for k in ("token_level_rewards", "response_mask")},
            non_tensors={"uid": nt["uid"]},
        )
        return compute_advantage_for_multi_trajectories(stripped, keys, "sgpo", config=config.algorithm)

    monkeypatch.setattr(PPOTrainerSync, "_compute_advantage", parent_step)
    trainer = cls.__new__(cls)
    trainer.config = config
    metrics = {}
    out = trainer._compute_advantage(None, metrics)
    expected = sgpo_of(data)
    assert torch.equal(out.batch["advantages"], expected)
    assert metrics["sgpo/diversified_frac"] > 0


def test_registration_is_idempotent_and_loads_through_verl_hooks():
    importlib.reload(sv)
    importlib.import_module("sgpo_rs.verl")
    assert core_algos.get_adv_estimator_fn("sgpo").__module__ == "sgpo_rs.verl.estimators"
    code = (
        "from verl.trainer.ppo import core_algos as c, ray_trainer as r\n"
        "print(c.get_adv_estimator_fn('sgpo').__name__, c.get_adv_estimator_fn('grpo_rs').__name__,"
        " getattr(r.compute_advantage, '_sgpo_rs_wrapped', False))\n"
    )
    for plugins in ("none", "auto"):
        env = dict(os.environ, VERL_USE_EXTERNAL_PLUGINS=plugins)
        if plugins == "none":
            env["VERL_USE_EXTERNAL_MODULES"] = "sgpo_rs.verl"
        else:
            env.pop("VERL_USE_EXTERNAL_MODULES", None)
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.split()[-3:] == ["sgpo", "grpo_rs", "True"], (plugins, out.stdout)


def test_make_compute_score_judges_incorrect_responses_only():
    calls = []

    def judge(problems, responses, rows):
        calls.append((problems, responses))
        return [(1, 3)]

    score = sv.make_compute_score(lambda ds, sol, gt, extra_info=None: float(sol == gt), judge)
    right = score("gsm8k", "42", "42", extra_info={"question": "q"})
    wrong = score("gsm8k", "41", "42", extra_info={"question": "what is 6*7"})
    assert right == {
        "score": 1.0,
        "sgpo_correct": True,
        "sgpo_first_error": -2,
        "sgpo_num_steps": 0,
        "sgpo_judged": False,
    }
    assert wrong["sgpo_first_error"] == 1 and wrong["sgpo_num_steps"] == 3 and wrong["sgpo_judged"] is True
    assert calls == [(["what is 6*7"], ["41"])]

    def broken(problems, responses, rows):
        raise ConnectionError("judge server down")

    score = sv.make_compute_score(lambda *a, **k: {"score": 0.0, "acc": False}, broken)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = score("x", "resp", "gt")
    assert out["sgpo_first_error"] == -2 and out["acc"] is False
    assert any("judge server down" in str(w.message) for w in caught)


@pytest.mark.parametrize(
    "change, error, match",
    [
        (lambda r, m, i: (r.double(), m, i), TypeError, "token_level_rewards"),
        (lambda r, m, i: (r, m[:, :-1], i), ValueError, "response_mask"),
        (lambda r, m, i: (r, m, i[:-1]), ValueError, "index"),
        (lambda r, m, i: (r, m, None), TypeError, "index"),
        (lambda r, m, i: (r.fill_(float("nan")), m, i), ValueError, "token_level_rewards"),
        (lambda r, m, i: (r[:, 0], m, i), ValueError, "token_level_rewards"),
        (lambda r, m, i: (r, m - 2, i), ValueError, "mask"),
    ],
)
def test_bad_input_names_the_argument(change, error, match):
    rewards, mask, index = batch(np.random.default_rng(0), 4, 8)
    with pytest.raises(error, match=match):
        sv.compute_grpo_outcome_advantage(*change(rewards, mask, index))


def test_example_runs_and_sgpo_moves_the_all_wrong_group(capsys):
    import runpy

    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    runpy.run_path(os.path.join(root, "examples", "verl_sgpo.py"), run_name="__main__")
    out = capsys.readouterr().out.splitlines()
    lines = {line.split(":")[0].strip(): line for line in out}
    assert "group B [0. 0. 0. 0.]" in lines["grpo"]
    assert "group B [0. 0. 0. 0.]" not in lines["sgpo"]
    # Judging at the advantage step: the same advantages, from the all-wrong group's 4 responses
    # instead of all 7 wrong ones.
    deferred = lines["sgpo, judged at the advantage step"]
    assert deferred.split(":", 1)[1] == lines["sgpo"].split(":", 1)[1]
    calls = [line.split("judge calls:")[1].split(",")[0].strip() for line in out if "judge calls:" in line]
    assert calls == ["7", "4"]


def test_length_scores_and_the_paper_rule_through_verl():
    from verl.trainer.ppo import ray_trainer

    # The reward function: a wrong answer judged wrong at its second step, scored by length.
    seen = []

    def judge(problems, responses, rows):
        seen.append(responses)
        return [(1, 2)] * len(responses)

    score = sv.make_compute_score(lambda *a, **k: 0.0, judge, credit_unit="length")
    out = score("math", "a short step\n\nand a much longer second step", "42", extra_info={"question": "Q"})
    assert out["sgpo_score"] == pytest.approx(
        len("a short step") / (12 + len("and a much longer second step"))
    )
    with pytest.raises(ValueError, match="credit_unit"):
        sv.make_compute_score(lambda *a, **k: 0.0, judge, credit_unit="bytes")
    # The estimator takes the scores as they are, under the paper's rule.
    rng = np.random.default_rng(11)
    data = data_proto(rng)
    n = len(data)
    scores = rng.random(n)
    scores[~data.non_tensor_batch["sgpo_judged"]] = np.nan
    data.non_tensor_batch["sgpo_score"] = scores
    config = OmegaConf.create(
        {"norm_adv_by_std_in_grpo": True, "sgpo": {"preset": "paper", "credit_unit": "length"}}
    )
    got = ray_trainer.compute_advantage(data, "sgpo", config=config).batch["advantages"]
    nt = data.non_tensor_batch
    want, _ = sv.compute_grpo_outcome_advantage(
        expected_length_rewards(data, scores), data.batch["response_mask"], nt["uid"]
    )
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=TOL)
    # Without the scores the length unit refuses instead of training on step counts.
    del data.non_tensor_batch["sgpo_score"]
    with pytest.raises(RuntimeError, match="credit_unit=length needs the reward function's sgpo_score"):
        ray_trainer.compute_advantage(data, "sgpo", config=config)


def expected_length_rewards(data, scores):
    """Token-level rewards whose row sums are the paper-rule rewards of the given length scores."""
    rewards = data.batch["token_level_rewards"]
    totals = rewards.double().sum(-1).float().double().numpy()  # verl's float32 sequence scores
    out = sgpo_rs.sgpo_rewards(totals, credit=scores, group_ids=data.non_tensor_batch["uid"], preset="paper")
    token = torch.zeros_like(rewards)
    token[:, 0] = torch.from_numpy(out.rewards.astype(np.float32))
    return token


def test_v1_multi_output_sessions_group_by_final_outputs(monkeypatch):
    """An agent loop with several outputs per session: ``sgpo`` normalises over each session's
    final output (its verdict) and broadcasts, as verl's v1 step does for ``grpo``; the verdicts
    of the other outputs are not used."""
    pytest.importorskip("transfer_queue")
    from sgpo_rs.verl import trainers
    from verl.trainer.ppo.v1 import PPOTrainerSync, get_trainer_cls, trainer_base

    rng = np.random.default_rng(21)
    keys, finals = [], []
    for g in range(5):
        for session in range(4):
            outputs = int(rng.integers(1, 4))
            for index in range(outputs):
                keys.append(f"uid{g}_{session}_{index}")
                finals.append(index == outputs - 1)
    order = rng.permutation(len(keys))
    keys = [keys[i] for i in order]
    finals = np.array(finals)[order]
    n = len(keys)
    uids = np.array([k.split("_")[0] for k in keys], dtype=object)
    length = 7
    lengths = rng.integers(1, length + 1, size=n)
    mask = torch.from_numpy((np.arange(length)[None, :] < lengths[:, None]).astype(np.int64))
    score = (rng.random(n) < 0.3).astype(np.float32) * finals  # only final outputs carry a reward
    score[np.isin(uids, ["uid0", "uid1"])] = 0.0  # two all-wrong groups
    rewards = torch.zeros(n, length)
    rewards[torch.arange(n), torch.from_numpy(lengths - 1)] = torch.from_numpy(score)
    num_steps = rng.integers(2, 6, size=n)
    first_error = np.minimum(rng.integers(-1, 5, size=n), num_steps - 1)
    infos = [
        {
            "sgpo_correct": bool(score[i] > 0),
            "sgpo_first_error": int(first_error[i]) if finals[i] else 99,  # garbage off the finals
            "sgpo_num_steps": int(num_steps[i]),
            "sgpo_judged": True,
        }
        for i in range(n)
    ]
    monkeypatch.setattr(trainers, "read_reward_extra_info", lambda batch: infos)
    config = OmegaConf.create({"algorithm": {"adv_estimator": "sgpo", "norm_adv_by_std_in_grpo": True}})

    def parent_step(self, batch, metrics):
        data = DataProto.from_dict(
            tensors={"token_level_rewards": rewards, "response_mask": mask}, non_tensors={"uid": uids}
        )
        return trainer_base.compute_advantage_for_multi_trajectories(
            data, keys, "sgpo", config=config.algorithm
        )

    monkeypatch.setattr(PPOTrainerSync, "_compute_advantage", parent_step)
    trainer = get_trainer_cls("sgpo_sync").__new__(get_trainer_cls("sgpo_sync"))
    trainer.config = config
    metrics = {}
    out = trainer._compute_advantage(None, metrics)

    rows = np.flatnonzero(finals)
    final_adv, _ = sv.compute_sgpo_outcome_advantage(
        rewards[rows], mask[rows], uids[rows], first_error[rows], num_steps[rows], correct=score[rows] > 0
    )
    per_final = {
        keys[r].rsplit("_", 1)[0]: float(final_adv[i, int(mask[r].argmax())]) for i, r in enumerate(rows)
    }
    expected = torch.tensor([per_final[k.rsplit("_", 1)[0]] for k in keys]).unsqueeze(-1) * mask
    assert torch.equal(out.batch["advantages"], expected.to(out.batch["advantages"].dtype))
    assert metrics["sgpo/diversified_frac"] > 0
    wrong_groups = [g for g in set(uids) if not (score[rows][uids[rows] == g] > 0).any()]
    assert {"uid0", "uid1"} <= set(wrong_groups)
    assert metrics["sgpo/all_negative_frac"] == pytest.approx(len(wrong_groups) / 5)
    with pytest.raises(ValueError, match="batch_keys"):
        trainer_base.compute_advantage_for_multi_trajectories(None, ["no-session"], "sgpo")
