"""verl's GRPO advantage step: ``grpo_rs`` (sgpo_rs.verl, the Rust kernels) against verl's own
``grpo`` (the Python loop) and ``grpo_vectorized``, all called through verl's estimator registry
on verl's input types, in one run, side by side, with the memory-bandwidth floor. Then verl's
policy loss: ``loss_mode=sgpo_rs`` (the fused kernel) against verl's ``vanilla`` in torch eager,
forward and backward, through verl's policy-loss registry.

    python benches/verl_compare.py                   # N in {1280, 5120, 8192} x L in {1024, 8192}
    python benches/verl_compare.py --sizes 1280x1024 --repeats 3 --loss-sizes 64x4096

Inputs as the verl driver holds them: float32 ``token_level_rewards`` with one non-zero per row,
int64 ``response_mask`` (random lengths), ``index`` = numpy object array of uuid4 strings, groups
of 8 rows shuffled over the batch (``balance_batch``). Each call returns a fresh ``(N, L)`` float32
tensor and the previous one is dropped first, as in a training loop. The floor is the bytes the
step must move (read rewards and mask, write the advantages) over the copy bandwidth measured in
this run (benches/timing.py's ``copy_bandwidth``: best of one-thread and all-thread copies).
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import bench, copy_bandwidth, cpu_name  # noqa: E402

GROUP = 8


def inputs(n: int, length: int, rng: np.random.Generator):
    import torch

    uids = [str(uuid.uuid4()) for _ in range(n // GROUP)]
    index = np.array([u for u in uids for _ in range(GROUP)], dtype=object)[rng.permutation(n)]
    lengths = rng.integers(1, length + 1, size=n)
    mask = torch.from_numpy((np.arange(length)[None, :] < lengths[:, None]).astype(np.int64))
    rewards = torch.zeros(n, length, dtype=torch.float32)
    rewards[torch.arange(n), torch.from_numpy(lengths - 1)] = torch.from_numpy(
        (rng.random(n) > 0.5).astype(np.float32)
    )
    return rewards, mask, index


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1280x1024,5120x1024,8192x1024,1280x8192,5120x8192,8192x8192")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loop-repeats", type=int, default=2, help="repeats of verl's slow Python loop")
    parser.add_argument("--loss-sizes", default="64x4096,512x8192", help="B x L of the policy loss; '' skips")
    args = parser.parse_args()

    import sgpo_rs.verl  # noqa: F401  (registers grpo_rs)
    import torch
    from omegaconf import OmegaConf
    from verl.trainer.ppo import core_algos

    threads = os.cpu_count() or 1
    single, multi, fault = copy_bandwidth(256 * 2**20, 5, threads)
    bandwidth = max(single, multi)
    print(
        f"CPU: {cpu_name()}, {threads} cores; torch {torch.__version__} on {torch.get_num_threads()} threads"
    )
    print(
        f"copy bandwidth (read + write): {bandwidth / 1e9:.1f} GB/s; fresh pages cost {fault * 1e9:.3f} s/GB"
    )
    config = OmegaConf.create({"norm_adv_by_std_in_grpo": True})
    estimators = {name: core_algos.get_adv_estimator_fn(name) for name in ("grpo_rs", "grpo_vectorized")}
    header = (
        f"{'N x L':>12} {'floor':>9} {'grpo_rs':>9} {'vectorized':>10} {'loop':>9}  vec/rs  loop/rs  rs/floor"
    )
    print(header)
    rng = np.random.default_rng(0)
    for size in args.sizes.split(","):
        n, length = (int(x) for x in size.lower().split("x"))
        rewards, mask, index = inputs(n, length, rng)
        floor = (rewards.numel() * 4 + mask.numel() * 8 + rewards.numel() * 4) / bandwidth
        held = {}

        def call(fn, name):
            held.pop(name, None)  # drop the previous result first, as a training loop does
            held[name] = fn(token_level_rewards=rewards, response_mask=mask, index=index, config=config)[0]

        rs = bench(lambda: call(estimators["grpo_rs"], "rs"), args.repeats)[0]
        vec = bench(lambda: call(estimators["grpo_vectorized"], "vec"), args.repeats)[0]
        loop = bench(
            lambda: call(lambda **k: core_algos.compute_grpo_outcome_advantage(**k), "loop"),
            args.loop_repeats,
            warmup=1,
        )[0]
        diff = (held["rs"] - held["loop"]).abs().max().item()
        print(
            f"{size:>12} {floor * 1e3:7.1f}ms {rs * 1e3:7.1f}ms {vec * 1e3:8.1f}ms {loop * 1e3:7.0f}ms"
            f"  {vec / rs:6.1f}x {loop / rs:7.1f}x {rs / floor:8.2f}x   (max |rs - loop| {diff:.1e})"
        )
        held.clear()
    if args.loss_sizes:
        policy_loss_rows(args.loss_sizes, args.repeats, bandwidth)


def policy_loss_rows(sizes: str, repeats: int, bandwidth: float) -> None:
    """verl's vanilla policy loss (token-mean, float32, bool mask) forward + backward: the fused
    ``sgpo_rs`` loss mode against verl's own in torch eager, both from verl's registry."""
    import torch
    from verl.trainer.ppo import core_algos
    from verl.workers.config.actor import ActorConfig

    config = ActorConfig(
        strategy="fsdp", rollout_n=8, ppo_mini_batch_size=8, ppo_micro_batch_size_per_gpu=1, clip_ratio=0.2
    )
    losses = {name: core_algos.get_policy_loss_fn(name) for name in ("sgpo_rs", "vanilla")}
    print(f"\n{'B x L':>12} {'floor':>9} {'sgpo_rs':>9} {'vanilla':>9}  vanilla/sgpo_rs  sgpo_rs/floor")
    g = torch.Generator().manual_seed(0)
    for size in sizes.split(","):
        b, length = (int(x) for x in size.lower().split("x"))
        old = -2.0 * torch.rand(b, length, generator=g)
        logp = (old + 0.2 * torch.randn(b, length, generator=g)).requires_grad_(True)
        adv = torch.randn(b, 1, generator=g).expand(b, length).contiguous()
        mask = torch.rand(b, length, generator=g) > 0.1
        # Read logp, old, advantages (4 bytes each) and the mask (1), write the gradient (4).
        floor = b * length * (4 * 4 + 1) / bandwidth

        def step(fn):
            logp.grad = None
            loss, _ = fn(old, logp, adv, mask, loss_agg_mode="token-mean", config=config)
            loss.backward()
            return float(loss.detach())

        fused = bench(lambda: step(losses["sgpo_rs"]), repeats)[0]
        eager = bench(lambda: step(losses["vanilla"]), repeats)[0]
        diff = abs(step(losses["sgpo_rs"]) - step(losses["vanilla"]))
        print(
            f"{size:>12} {floor * 1e3:7.2f}ms {fused * 1e3:7.2f}ms {eager * 1e3:7.2f}ms"
            f"  {eager / fused:15.1f}x {fused / floor:13.2f}x   (|loss diff| {diff:.1e})"
        )


if __name__ == "__main__":
    main()
