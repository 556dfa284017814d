"""The CUDA path's input checks and error path, without a GPU.

Every tensor the CUDA wrappers (``sgpo_rs._cuda``) hand to a kernel goes to the core as a
description (pointer, dtype, shape, strides, device), and the core checks it before anything is
launched, with the CPU path's shape rules. So the wrappers can run here on torch's "meta" device
(shapes without memory): a wrong shape must give the very message the CPU path gives, and
well-shaped inputs must get as far as the device check. The descriptions' device, dtype, layout
and buffer-size checks have Rust tests (``src/cuda/loss.rs``, ``logprob.rs``, ``tensor.rs``).

When a kernel flags an input, the wrappers rerun the call on host copies through the CPU engine
(``_cuda._engine_error``), so the error is the CPU path's own. Those reruns are exercised here on
CPU tensors with each kind of invalid input, against the public CPU functions' messages.
"""

from __future__ import annotations

import numpy as np
import pytest
import sgpo_rs as sg
from sgpo_rs import _cuda

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not _cuda.built(), reason="this build of sgpo-rs has no CUDA path")

B, T = 3, 8


def message(call) -> str:
    with pytest.raises((ValueError, TypeError, RuntimeError)) as info:
        call()
    return f"{type(info.value).__name__}: {info.value}"


def meta(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x, device="meta")


def loss_inputs(**shapes):
    """float32 logp, old_logp, ref_logp, advantages and a bool mask, of the default shapes or those
    given by name."""
    rng = np.random.default_rng(0)
    shape = {"logp": (B, T), "old_logp": (B, T), "ref_logp": (B, T), "advantages": (B,), "mask": (B, T)}
    shape.update(shapes)
    out = {name: torch.from_numpy(rng.normal(-1.0, 0.3, s).astype(np.float32)) for name, s in shape.items()}
    out["mask"] = out["mask"] > -1.2
    return out


SHAPE_SLIPS = {
    "logp 1-D": dict(logp=(B * T,)),
    "logp 3-D": dict(logp=(B, T, 1)),
    "old_logp": dict(old_logp=(B, T - 1)),
    "ref_logp": dict(ref_logp=(B + 1, T)),
    "mask": dict(mask=(B, T + 1)),
    "mask 1-D": dict(mask=(B * T,)),
    "advantages per row": dict(advantages=(T,)),
    "advantages per token": dict(advantages=(B, T + 1)),
}


@pytest.mark.parametrize("slip", list(SHAPE_SLIPS))
def test_a_wrong_shape_gives_the_same_message_on_every_path(slip):
    from sgpo_rs.torch import _options, sgpo_loss

    x = loss_inputs(**SHAPE_SLIPS[slip])
    options = dict(beta=0.04)
    numpy_level = message(
        lambda: sg.policy_loss(
            x["logp"].numpy(),
            x["old_logp"].numpy(),
            x["advantages"].numpy(),
            x["mask"].numpy(),
            ref_logp=x["ref_logp"].numpy(),
            **options,
        )
    )
    torch_cpu = message(
        lambda: sgpo_loss(
            x["logp"], x["old_logp"], x["advantages"], x["mask"], ref_logp=x["ref_logp"], **options
        )
    )
    m = {name: meta(t) for name, t in x.items()}
    cuda = message(
        lambda: _cuda.policy_loss(
            m["logp"], m["old_logp"], m["ref_logp"], m["advantages"], m["mask"], _options(options)
        )
    )
    assert numpy_level == torch_cpu == cuda
    assert numpy_level.startswith("ValueError: ")


def test_well_shaped_inputs_pass_the_shape_checks_and_stop_at_the_device():
    from sgpo_rs.torch import _options

    m = {name: meta(t) for name, t in loss_inputs(advantages=(B, T)).items()}
    got = message(
        lambda: _cuda.policy_loss(m["logp"], m["old_logp"], None, m["advantages"], m["mask"], _options({}))
    )
    assert got == "RuntimeError: logp: expected a tensor on a CUDA device, got one on meta"
    # An `out=` of the wrong shape is named before anything is launched.
    got = message(
        lambda: _cuda.policy_loss(
            m["logp"],
            None,
            None,
            m["advantages"],
            m["mask"],
            _options({}),
            out=torch.empty(T, B, device="meta"),
        )
    )
    assert got.startswith("RuntimeError: logp: expected a tensor on a CUDA device")  # the device first
    got = message(
        lambda: _cuda.policy_loss(m["logp"], None, None, m["advantages"], m["mask"], _options({}), out=[])
    )
    assert got == "TypeError: out: expected a float32 CUDA tensor, got list"


@pytest.mark.parametrize(
    "shapes",
    [((B,), (B + 1, T)), ((B,), (B * T,)), ((B, 1), (B, T))],
    ids=["rows", "mask 1-D", "advantages 2-D"],
)
def test_token_advantages_shape_messages_match(shapes):
    adv_shape, mask_shape = shapes
    adv, mask = torch.ones(adv_shape), torch.ones(mask_shape, dtype=torch.bool)
    cpu = message(lambda: sg.token_advantages(adv.numpy(), mask.numpy()))
    cuda = message(lambda: _cuda.token_advantages(meta(adv), meta(mask)))
    assert cpu == cuda
    assert cpu.startswith("ValueError: ")


def test_selective_logprobs_reach_the_device_check_with_a_trl_style_view():
    full = torch.empty(3, 11, 4099, dtype=torch.bfloat16, device="meta")
    targets = torch.zeros(3, 10, dtype=torch.int64, device="meta")
    got = message(lambda: _cuda.selective_logprobs(full[:, :-1], targets, 1.0, False))
    assert got == "RuntimeError: logits: expected a tensor on a CUDA device, got one on meta"
    got = message(lambda: _cuda.selective_logprobs(full[:, :-1], targets[:, :-1], 1.0, False))
    assert got == "ValueError: targets: expected shape (30,) (one value per row of logits), got (27,)"
    got = message(lambda: _cuda.selective_logprobs(full[:, :-1].double(), targets, 1.0, False))
    assert got == "TypeError: logits: expected dtype float32, bfloat16 or float16 on CUDA, got float64"
    grad = torch.zeros(29, device="meta")
    got = message(lambda: _cuda.selective_logprobs_backward(full[:, :-1], targets, 1.0, grad, None))
    assert got == "ValueError: grad_logp: expected shape (30,) (one value per row of logits), got (29,)"


# --- the error path: a flagged status reruns the call through the CPU engine -------------------


def engine_error(rerun) -> str:
    error = _cuda._engine_error("test", 1, rerun)
    return f"{type(error).__name__}: {error}"


@pytest.mark.parametrize(
    "name, value", [("logp", float("nan")), ("old_logp", float("inf")), ("ref_logp", float("-inf"))]
)
def test_flagged_loss_inputs_raise_the_cpu_error(name, value):
    from sgpo_rs.torch import _options, sgpo_loss

    y = loss_inputs()
    y["mask"][2, 5] = True
    y[name][2, 5] = value
    args = (y["logp"], y["old_logp"], y["ref_logp"], y["advantages"], y["mask"])
    got = engine_error(lambda: _cuda._cpu_policy_loss(*args, _options(dict(beta=0.1))))
    want = message(lambda: sgpo_loss(args[0], args[1], args[3], args[4], ref_logp=args[2], beta=0.1))
    assert got == want and f"{name}: expected finite values" in got


def test_flagged_weights_and_advantages_raise_the_cpu_error():
    from sgpo_rs.torch import _options

    x = loss_inputs()
    weights = x["mask"].float()
    weights[1, 3] = -1.0
    got = engine_error(
        lambda: _cuda._cpu_policy_loss(x["logp"], None, None, x["advantages"], weights, _options({}))
    )
    assert got.startswith("ValueError: mask: expected finite weights >= 0")
    # half-precision inputs and per-token advantages take the same route
    huge = x["logp"].to(torch.bfloat16)
    adv = torch.full((B, T), float("nan"))
    got = engine_error(lambda: _cuda._cpu_policy_loss(huge, None, None, adv, x["mask"], _options({})))
    assert got.startswith("ValueError: advantages: expected finite values")


def test_flagged_logits_raise_the_cpu_error():
    from sgpo_rs.torch import selective_log_softmax

    logits = torch.randn(2, 5, 7, dtype=torch.bfloat16)
    targets = torch.randint(0, 7, (2, 5))
    bad = logits.clone()
    bad[1, 2, 4] = float("nan")
    got = engine_error(lambda: _cuda._cpu_selective_logprobs(bad, targets.reshape(-1), 0.7, True))
    assert got == message(lambda: selective_log_softmax(bad, targets, 0.7, True))
    assert "logits: expected finite values" in got
    wrong = targets.clone()
    wrong[0, 3] = 7
    got = engine_error(lambda: _cuda._cpu_selective_logprobs(logits, wrong, 1.0, False))
    assert got.startswith("ValueError: targets: expected token ids in [0, 7), got 7 at row 3")
    g = torch.ones(10)
    g[6] = float("inf")
    got = engine_error(lambda: _cuda._cpu_selective_logprobs_backward(logits, targets, 1.0, g, None))
    assert got.startswith("ValueError: grad_logp: expected finite values")
    gh = torch.ones(10)
    gh[1] = float("nan")
    got = engine_error(
        lambda: _cuda._cpu_selective_logprobs_backward(logits, targets, 1.0, torch.ones(10), gh)
    )
    assert got.startswith("ValueError: grad_entropy: expected finite values")


def test_flagged_rewards_and_advantages_raise_the_cpu_error():
    rewards = torch.tensor([0.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    first_error = torch.tensor([0, 5, 0, 0])
    num_steps = torch.tensor([3, 3, 3, 3])
    correct = torch.tensor([0, 0, 1, 0], dtype=torch.uint8)
    got = engine_error(
        lambda: _cuda._cpu_sgpo_rewards(
            rewards, first_error, num_steps, None, correct, 2, None, 0.5, "all_negative", "prefix", 5.0, 0.5
        )
    )
    want = message(lambda: sg.sgpo_rewards(rewards.numpy(), first_error, num_steps, group_size=2))
    assert got == want and "first_error" in got
    credit = torch.tensor([0.5, 1.5, 0.0, 0.0], dtype=torch.float64)
    got = engine_error(
        lambda: _cuda._cpu_sgpo_rewards(
            rewards,
            None,
            None,
            credit,
            None,
            None,
            ["a", "a", "b", "b"],
            0.5,
            "all_negative",
            "prefix",
            5.0,
            0.5,
        )
    )
    assert got.startswith("ValueError: credit: expected values in [0, 1]")
    inf = torch.tensor([0.0, float("inf")], dtype=torch.float64)
    got = engine_error(
        lambda: _cuda._cpu_group_advantages(inf, None, torch.tensor([4, 4]), "group", 1e-4, "zero")
    )
    assert got.startswith("ValueError: rewards: expected finite values")
    weights = torch.ones(2, 3)
    weights[1, 2] = float("nan")
    got = engine_error(lambda: _cuda._cpu_token_advantages(torch.ones(2), weights))
    assert got.startswith("ValueError: mask: expected finite weights >= 0")


def test_a_kernel_flagging_clean_inputs_is_reported_as_a_bug():
    error = _cuda._engine_error("policy loss", 0x10, lambda: None)
    assert isinstance(error, RuntimeError)
    assert "status 0x10" in str(error) and "CPU path accepts" in str(error)
