"""Judging at the advantage step (``make_compute_score(judge_at="advantage")``) through verl's own
``compute_advantage`` on a real ``DataProto``: only the rows the rule uses are judged, in one
call, and the advantages equal those of judging every incorrect response in the reward function
(exactly: the same verdicts reach the same float64 rule and GRPO)."""

import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("verl.trainer.ppo.core_algos")

import sgpo_rs  # noqa: E402
import sgpo_rs.verl as sv  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from sgpo_rs.verl import deferred, verdicts  # noqa: E402
from verl import DataProto  # noqa: E402

GROUPS, SIZE, LENGTH = 6, 4, 10


@pytest.fixture(autouse=True)
def no_driver_judge():
    sv.set_judge(None)
    yield
    sv.set_judge(None)


class CountingJudge:
    """A batch judge whose verdict is written in the response (``"k/n"``: first error k of n
    steps); records every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, problems, responses, rows):
        self.calls.append((list(problems), list(responses), [dict(r) for r in rows]))
        return [tuple(v) for v in written_verdicts(responses)]


def written_verdicts(responses):
    """``(first_error, num_steps)`` per response, as written at its start."""
    return np.array([[int(x) for x in r.split("|")[0].split("/")] for r in responses])


def verdict_text(rng):
    n = int(rng.integers(2, 6))
    return f"{int(rng.integers(-1, n))}/{n}|step one\n\nstep two\n\nstep three"


def data_proto(rng, compute_score, *, mixed_correct=True):
    """Six groups of four; groups 0-2 all wrong, the others mixed. Rows are shuffled. The reward
    extra info is what verl's reward loop stacks: ``np.array`` of each key over the samples."""
    uids = np.array([f"uid-{g}" for g in range(GROUPS) for _ in range(SIZE)], dtype=object)
    correct = np.zeros(GROUPS * SIZE, dtype=bool)
    if mixed_correct:
        correct[3 * SIZE :: 2] = True
    order = rng.permutation(len(uids))
    uids, correct = uids[order], correct[order]
    texts = [verdict_text(rng) for _ in uids]
    infos = [
        compute_score(
            "arith",
            text,
            f"answer {i}",
            extra_info={"question": f"problem of {uid}"},
        )
        for i, (uid, text) in enumerate(zip(uids, texts))
    ]
    # Correctness comes from the base score: the responses of correct rows score 1.
    n = len(uids)
    lengths = rng.integers(1, LENGTH + 1, size=n)
    mask = torch.from_numpy((np.arange(LENGTH)[None, :] < lengths[:, None]).astype(np.int64))
    rewards = torch.zeros(n, LENGTH)
    rewards[torch.arange(n), torch.from_numpy(lengths - 1)] = torch.from_numpy(
        np.array([info["score"] for info in infos], dtype=np.float32)
    )
    non_tensor = {"uid": uids}
    non_tensor.update({key: np.array([info[key] for info in infos]) for key in infos[0] if key != "score"})
    prompt = torch.ones(n, 2, dtype=torch.int64)
    tensors = {
        "token_level_rewards": rewards,
        "token_level_scores": rewards.clone(),
        "response_mask": mask,
        "responses": torch.zeros_like(mask),
        "prompts": prompt,
        "attention_mask": torch.cat([prompt, mask], dim=1),
    }
    return DataProto.from_dict(tensors=tensors, non_tensors=non_tensor), texts, correct


def base_score(correct_rows):
    """The task's reward: 1 for the rows marked correct, 0 otherwise (in data_proto's order)."""
    calls = iter(correct_rows)
    return lambda data_source, solution, ground_truth, extra_info=None: float(next(calls))


def deferred_batch(rng, **kwargs):
    # First draw the layout, then build the reward function that scores it.
    probe, _, correct = data_proto(np.random.default_rng(rng), lambda *a, **k: {"score": 0.0})
    del probe
    score = sv.make_compute_score(base_score(correct), judge_at="advantage", **kwargs)
    return data_proto(np.random.default_rng(rng), score)


def expected_advantages(data, texts, config_options=None):
    """Every incorrect response judged (the reward-function route), then the same estimator."""
    nt = data.non_tensor_batch
    verdict = written_verdicts(texts)
    incorrect = ~nt["sgpo_correct"].astype(bool)
    first_error = np.where(incorrect, verdict[:, 0], -2)
    num_steps = np.where(incorrect, verdict[:, 1], 0)
    advantages, _ = sv.compute_sgpo_outcome_advantage(
        data.batch["token_level_rewards"],
        data.batch["response_mask"],
        nt["uid"],
        first_error,
        num_steps,
        correct=nt["sgpo_correct"],
        **(config_options or {}),
    )
    return advantages


def test_reward_function_defers_and_records_the_texts():
    score = sv.make_compute_score(
        lambda ds, sol, gt, extra_info=None: {"score": 0.0, "acc": False},
        judge_at="advantage",
        reference_from_ground_truth=True,
    )
    out = score("arith", "1/3|a\n\nb", 42, extra_info={"problem": "p"})
    assert out == {
        "score": 0.0,
        "acc": False,
        "sgpo_correct": False,
        "sgpo_first_error": -2,
        "sgpo_num_steps": 0,
        "sgpo_judged": False,
        "sgpo_problem": "p",
        "sgpo_response": "1/3|a\n\nb",
        "sgpo_reference": "42",
    }


def test_legacy_trainer_judges_only_all_wrong_groups_in_one_call():
    from verl.trainer.ppo import ray_trainer

    data, texts, correct = deferred_batch(11)
    judge = CountingJudge()
    sv.set_judge(judge)
    config = OmegaConf.create({"norm_adv_by_std_in_grpo": True})
    expected = expected_advantages(data, texts)
    out = ray_trainer.compute_advantage(data, "sgpo", config=config)
    uids = data.non_tensor_batch["uid"]
    all_wrong = np.isin(uids, ["uid-0", "uid-1", "uid-2"])
    assert len(judge.calls) == 1
    problems, responses, rows = judge.calls[0]
    assert responses == [t for t, w in zip(texts, all_wrong) if w]
    assert problems == [f"problem of {u}" for u in uids[all_wrong]]
    assert rows == [{"ground_truth": ""}] * int(all_wrong.sum())  # no reference asked for
    assert torch.equal(out.batch["advantages"], expected)
    metrics = out.meta_info["sgpo_metrics"]
    assert metrics["sgpo/judge_calls"] == all_wrong.sum() == 3 * SIZE
    assert metrics["sgpo/judge_time_s"] >= 0 and metrics["sgpo/diversified_frac"] > 0
    logged = ray_trainer.compute_data_metrics(batch=out, use_critic=False)
    assert logged["sgpo/judge_calls"] == 3 * SIZE
    # The route that judges everything incorrect would have asked about the mixed groups too.
    assert (~correct).sum() > all_wrong.sum()


def test_mode_all_incorrect_judges_every_incorrect_row():
    from verl.trainer.ppo import ray_trainer

    data, texts, correct = deferred_batch(12)
    judge = CountingJudge()
    sv.set_judge(judge)
    config = OmegaConf.create({"sgpo": {"mode": "all_incorrect", "credit_scale": 0.4}})
    expected = expected_advantages(data, texts, {"mode": "all_incorrect", "credit_scale": 0.4})
    out = ray_trainer.compute_advantage(data, "sgpo", config=config)
    assert judge.calls[0][1] == [t for t, c in zip(texts, correct) if not c]
    assert torch.equal(out.batch["advantages"], expected)


def test_judge_from_config_factory_is_loaded_once(tmp_path, monkeypatch):
    from verl.trainer.ppo import ray_trainer

    (tmp_path / "my_sgpo_judges.py").write_text(
        "import sys\n"
        "made = []\n"
        "def make_judge():\n"
        "    judge = sys.modules['test_verl_deferred'].CountingJudge()\n"
        "    made.append(judge)\n"
        "    return judge\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "test_verl_deferred", sys.modules[__name__])
    config = OmegaConf.create({"sgpo": {"judge": "my_sgpo_judges:make_judge"}})
    for seed in (1, 2):
        data, texts, _ = deferred_batch(seed)
        out = ray_trainer.compute_advantage(data, "sgpo", config=config)
        assert torch.equal(out.batch["advantages"], expected_advantages(data, texts))
    made = sys.modules["my_sgpo_judges"].made
    assert len(made) == 1 and len(made[0].calls) == 2
    with pytest.raises(ValueError, match="algorithm.sgpo.judge"):
        deferred._load("my_sgpo_judges:nothing_here")


def test_length_credit_from_the_deferred_texts():
    from verl.trainer.ppo import ray_trainer

    data, texts, _ = deferred_batch(5)
    sv.set_judge(CountingJudge())
    config = OmegaConf.create({"sgpo": {"credit_unit": "length", "rule": "logistic", "beta": 2.0}})
    out = ray_trainer.compute_advantage(data, "sgpo", config=config)
    nt = data.non_tensor_batch
    all_wrong = np.isin(nt["uid"], ["uid-0", "uid-1", "uid-2"])
    verdict = written_verdicts(texts)
    first_error = np.where(all_wrong, verdict[:, 0], -2)
    credit = sgpo_rs.length_scores(texts, first_error, strict=False)
    result = sgpo_rs.sgpo_rewards(
        data.batch["token_level_rewards"].sum(-1).numpy().astype(np.float64),
        credit=credit,
        group_ids=nt["uid"],
        correct=nt["sgpo_correct"],
        credit_scale=0.5,
        rule="logistic",
        beta=2.0,
    )
    rewards = torch.zeros_like(data.batch["token_level_rewards"])
    rewards[:, 0] = torch.from_numpy(result.rewards.astype(np.float32))
    expected, _ = sv.compute_grpo_outcome_advantage(rewards, data.batch["response_mask"], nt["uid"])
    np.testing.assert_allclose(out.batch["advantages"].numpy(), expected.numpy(), rtol=0, atol=2e-6)


def test_a_dead_judge_warns_then_stops_the_run():
    from verl.trainer.ppo import ray_trainer

    def broken(problems, responses, rows):
        raise ConnectionError("judge server down")

    sv.set_judge(broken)
    config = OmegaConf.create({"sgpo": {"judge_max_failed_steps": 2}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = ray_trainer.compute_advantage(deferred_batch(3)[0], "sgpo", config=config)
    assert any("judge server down" in str(w.message) for w in caught)
    assert out.meta_info["sgpo_metrics"]["sgpo/judge_missing_frac"] > 0
    with pytest.raises(RuntimeError, match="judge_max_failed_steps=2") as info:
        ray_trainer.compute_advantage(deferred_batch(4)[0], "sgpo", config=config)
    assert isinstance(info.value.__cause__, ConnectionError)


def test_refusals_name_what_to_set():
    from verl.trainer.ppo import ray_trainer

    with pytest.raises(RuntimeError, match=r"\+algorithm.sgpo.judge"):
        ray_trainer.compute_advantage(deferred_batch(6)[0], "sgpo", config=OmegaConf.create({}))
    sv.set_judge(CountingJudge())
    with pytest.raises(RuntimeError, match="credit_unit=tokens"):
        config = OmegaConf.create({"sgpo": {"credit_unit": "tokens"}})
        ray_trainer.compute_advantage(deferred_batch(6)[0], "sgpo", config=config)
    with pytest.raises(ValueError, match="judge_timeout_s"):
        config = OmegaConf.create({"sgpo": {"judge_timeout_s": -1}})
        ray_trainer.compute_advantage(deferred_batch(6)[0], "sgpo", config=config)
    base = lambda *a, **k: 0.0  # noqa: E731
    with pytest.raises(ValueError, match="judge"):
        sv.make_compute_score(base, CountingJudge(), judge_at="advantage")
    with pytest.raises(ValueError, match="credit_unit"):
        sv.make_compute_score(base, judge_at="advantage", credit_unit="length")
    with pytest.raises(ValueError, match="judge_at"):
        sv.make_compute_score(base, CountingJudge(), judge_at="rollout")
    with pytest.raises(TypeError, match="judge"):
        sv.make_compute_score(base)
    with pytest.raises(TypeError, match="class"):
        sv.set_judge(CountingJudge)


def test_v1_trainer_judges_from_reward_extra_info(monkeypatch):
    pytest.importorskip("transfer_queue")
    from sgpo_rs.verl import trainers
    from verl.trainer.ppo.v1 import PPOTrainerSync, get_trainer_cls
    from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

    data, texts, _ = deferred_batch(9)
    nt = data.non_tensor_batch
    infos = [{k: nt[k][i] for k in verdicts.KEYS if k in nt} for i in range(len(data))]
    keys = [f"{u}_0_0" for u in nt["uid"]]
    monkeypatch.setattr(trainers, "read_reward_extra_info", lambda batch: infos)
    config = OmegaConf.create({"algorithm": {"adv_estimator": "sgpo", "norm_adv_by_std_in_grpo": True}})

    def parent_step(self, batch, metrics):
        stripped = DataProto.from_dict(
            tensors={k: data.batch[k] for k in ("token_level_rewards", "response_mask")},
            non_tensors={"uid": nt["uid"]},
        )
        return compute_advantage_for_multi_trajectories(stripped, keys, "sgpo", config=config.algorithm)

    monkeypatch.setattr(PPOTrainerSync, "_compute_advantage", parent_step)
    judge = CountingJudge()
    sv.set_judge(judge)
    trainer = get_trainer_cls("sgpo_sync").__new__(get_trainer_cls("sgpo_sync"))
    trainer.config = config
    metrics = {}
    out = trainer._compute_advantage(None, metrics)
    assert torch.equal(out.batch["advantages"], expected_advantages(data, texts))
    assert len(judge.calls) == 1 and metrics["sgpo/judge_calls"] == 3 * SIZE
