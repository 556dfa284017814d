"""CUDA kernels against torch eager (TRL's formulas), torch.compile and Liger-Kernel's Triton GRPO
loss (logits to loss, where ``liger_kernel`` imports), side by side.

    python benches/cuda_compare.py [--quick] [--out results.json]

Needs a CUDA GPU. Times are medians of CUDA-event timings after warm-up, rotating among several
input sets so repeated runs do not measure the L2 cache. Each kernel's floor is the bytes it must
move divided by the measured device-to-device copy bandwidth (bytes read + written per second):

- fused loss fwd+bwd, token-level, bool mask, (B,) advantages: reads logp, old_logp (and ref_logp
  with beta) and the mask twice (row pass + token pass), writes the float32 gradient:
  ``B*T*(2*s + 2 + 4)`` bytes for element size ``s`` (+ ``B*T*s`` with beta).
- selective log-softmax forward: reads the logits once, ``N*V*s`` bytes; forward+backward reads
  them twice (the forward, and the backward, which reuses the forward's row statistics) and
  writes dlogits once: ``3*N*V*s``. Logits to loss likewise (the loss inputs are negligible).
- token advantages: reads the bool mask, writes the float32 output: ``N*L*(1 + 4)`` bytes.

"sg" is the sgpo_rs.torch op as a training loop calls it (it reads the metrics and the input
check, which waits for the stream); for the loss, "op check=False" is the same op without that
read (nothing waits for the stream: the number to hold against the kernels); "sg kernel" is the
launch sequence alone, device time only (for the loss ``sgpo_rs._cuda.policy_loss(check=False)``
replayed from a CUDA graph; for the log-softmax, whose kernels outlast their launch, timed
eagerly), the number compared with the floor. Logits to loss runs twice: "op" slices the logits
in autograd as TRL does (``selective_log_softmax(logits[:, :-1])``), "completion_logprobs" hands
the full logits to ``sgpo_rs.torch.completion_logprobs`` (no slice in autograd), the number to
hold against Liger's fused loss.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from typing import Any, Callable, Dict, List, Optional

import sgpo_rs
import torch
from cuda_profile import graph_ms, logits_inputs  # benches/cuda_profile.py
from sgpo_rs import _cuda
from sgpo_rs.torch import _options as loss_options  # the checked defaults of policy_loss
from sgpo_rs.torch import completion_logprobs, selective_log_softmax, sgpo_loss


def bench(fn: Callable[[int], Any], sets: int, warmup: int = 3, reps: int = 15) -> float:
    """Median milliseconds of ``fn(i)`` over input sets ``i``, timed with CUDA events."""
    for i in range(warmup):
        fn(i % sets)
    torch.cuda.synchronize()
    times = []
    for r in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(r % sets)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def device_ms(fn: Callable[[int], Any]) -> float:
    """Device milliseconds of ``fn(0)``'s launches alone: captured in a CUDA graph and replayed
    (the launch sequence of a small loss takes less device time than its host wrapper)."""
    try:
        return graph_ms(lambda: fn(0))
    except Exception as error:  # noqa: BLE001 - report, fall back to eager timing
        print(f"(graph capture failed: {str(error)[:120]}; timing eagerly)")
        return bench(fn, 3)


def copy_bandwidth() -> float:
    """Bytes read + written per second by a 1 GiB device-to-device copy."""
    n = 1 << 28
    x = torch.empty(n, dtype=torch.float32, device="cuda")
    y = torch.empty_like(x)
    ms = bench(lambda _: y.copy_(x), 1, reps=20)
    return 2 * n * 4 / (ms * 1e-3)


def trl_loss(lp, old, adv, mask, ref, beta, eps_low=0.2, eps_high=0.2):
    """TRL 1.16 ``_compute_loss`` for loss_type="dapo", token-level importance sampling."""
    coef_1 = torch.exp(lp - old)
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    a = adv.unsqueeze(1)
    per_token = -torch.min(coef_1 * a, coef_2 * a)
    if beta != 0.0:
        kl = torch.exp(ref - lp) - (ref - lp) - 1
        per_token = per_token + beta * kl
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp(min=1.0)


def liger_grpo_loss() -> Optional[Callable]:
    """Liger-Kernel's Triton GRPO loss (logits in, per-token loss out), where it imports."""
    try:
        from liger_kernel.transformers.grpo_loss import triton_grpo_loss
    except Exception:  # noqa: BLE001 - Liger is optional
        return None
    return triton_grpo_loss


def logits_loss_rows(quick: bool) -> List[Dict[str, Any]]:
    """Logits to loss, forward and backward: sgpo-rs's selective log-softmax + fused loss against
    Liger's Triton GRPO loss (which fuses both) and torch eager, at TRL's default loss (grpo,
    beta 0.04)."""
    liger = liger_grpo_loss()
    shapes = [(8, 1024, 32768)] if quick else [(8, 1024, 32768), (8, 1024, 152064)]
    rows = []
    for batch, length, vocab in shapes:
        logits, ids, old, ref, adv, mask = logits_inputs(batch, length, vocab)

        def run_sg(_):
            x = logits.detach().requires_grad_(True)
            lp = selective_log_softmax(x[:, :-1], ids)
            loss, _ = sgpo_loss(lp, old, adv, mask, ref_logp=ref, beta=0.04, loss_type="grpo")
            loss.backward()

        def run_completion(_):
            x = logits.detach().requires_grad_(True)
            lp = completion_logprobs(x, ids)
            loss, _ = sgpo_loss(lp, old, adv, mask, ref_logp=ref, beta=0.04, loss_type="grpo")
            loss.backward()

        def run_eager(_):
            x = logits.detach().requires_grad_(True)
            lp = torch.log_softmax(x[:, :-1].float(), -1).gather(-1, ids[..., None])[..., 0]
            coef_1 = torch.exp(lp - old)
            coef_2 = torch.clamp(coef_1, 0.8, 1.2)
            per_token = -torch.min(coef_1 * adv[:, None], coef_2 * adv[:, None])
            per_token = per_token + 0.04 * (torch.exp(ref - lp) - (ref - lp) - 1)
            m = mask.float()
            ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1)).mean().backward()

        row: Dict[str, Any] = {
            "op": "logits->loss fwd+bwd (grpo)",
            "shape": f"{batch}x{length}x{vocab} bf16",
            "floor_ms": 3 * logits.numel() * 2 / BANDWIDTH[0] * 1e3,
            "sg_ms": bench(run_sg, 1, reps=5),
            # The full logits in: no slice in autograd (no zero fill and copy of their size).
            "completion_ms": bench(run_completion, 1, reps=5),
        }
        try:
            row["eager_ms"] = bench(run_eager, 1, reps=5)
        except torch.OutOfMemoryError:
            row["eager_ms"] = None
        row["liger_ms"] = None
        if liger is not None:

            def run_liger(_):
                x = logits.detach().requires_grad_(True)
                out = liger(x, old, ref, ids, adv, mask, 1.0, 0.04, 0.2, 0.2, False)
                per_token = out[0] if isinstance(out, tuple) else out
                m = mask.float()
                ((per_token * m).sum(-1) / m.sum(-1).clamp(min=1)).mean().backward()

            try:
                row["liger_ms"] = bench(run_liger, 1, reps=5)
            except Exception as error:  # noqa: BLE001 - report, keep going
                row["liger_error"] = str(error)[:300]
        row["bandwidth_frac"] = row["floor_ms"] / row["sg_ms"]  # the op: no kernels-only timing here
        rows.append(row)
        print_row(row)
        logits = None  # free before the next size
        torch.cuda.empty_cache()
    return rows


BANDWIDTH = [1.0]


def loss_rows(quick: bool, bandwidth: float) -> List[Dict[str, Any]]:
    shapes = [(64, 4096), (512, 8192)] if not quick else [(64, 4096)]
    rows = []
    compiled = torch.compile(trl_loss)
    for batch, length in shapes:
        for dtype in (torch.float32, torch.bfloat16):
            for beta in (0.0, 0.04):
                sets = []
                for _ in range(3):
                    lp = torch.randn(batch, length, device="cuda").mul(0.5).sub(1).to(dtype)
                    old = (lp.float() + 0.3 * torch.randn_like(lp.float())).to(dtype)
                    ref = (lp.float() + 0.3 * torch.randn_like(lp.float())).to(dtype)
                    adv = torch.randn(batch, device="cuda")
                    mask = torch.rand(batch, length, device="cuda") > 0.2
                    sets.append((lp, old, adv, mask, ref))

                def run_sg(i, check=True):
                    lp, old, adv, mask, ref = sets[i]
                    x = lp.detach().requires_grad_(True)
                    loss, _ = sgpo_loss(
                        x, old, adv, mask, ref_logp=ref if beta else None, beta=beta, check=check
                    )
                    loss.backward()

                opts = loss_options(dict(beta=beta))

                def run_kernel(i):
                    lp, old, adv, mask, ref = sets[i]
                    _cuda.policy_loss(lp, old, ref if beta else None, adv, mask, opts, check=False)

                def run_torch(fn):
                    def go(i):
                        lp, old, adv, mask, ref = sets[i]
                        x = lp.detach().requires_grad_(True)
                        fn(x, old, adv, mask, ref, beta).backward()

                    return go

                size = 4 if dtype == torch.float32 else 2
                nbytes = batch * length * (2 * size + 2 + 4 + (size if beta else 0))
                floor_ms = nbytes / bandwidth * 1e3
                row: Dict[str, Any] = {
                    "op": "policy_loss fwd+bwd (dapo)",
                    "shape": f"{batch}x{length} {str(dtype)[6:]} beta={beta}",
                    "floor_ms": floor_ms,
                    "sg_ms": bench(run_sg, 3),
                    # the op without the status/metrics read (no wait for the stream)
                    "sg_nosync_ms": bench(lambda i: run_sg(i, check=False), 3),
                    "sg_kernel_ms": device_ms(run_kernel),
                    "eager_ms": bench(run_torch(trl_loss), 3),
                }
                try:
                    row["compile_ms"] = bench(run_torch(compiled), 3)
                except Exception as error:  # noqa: BLE001 - report, keep going
                    row["compile_ms"] = None
                    row["compile_error"] = str(error)[:200]
                row["bandwidth_frac"] = floor_ms / row["sg_kernel_ms"]
                rows.append(row)
                print_row(row)
    return rows


def trl_selective_log_softmax() -> Optional[Callable]:
    try:
        from trl.trainer.utils import selective_log_softmax as trl_sls
    except Exception:  # noqa: BLE001 - TRL is optional here
        return None
    return trl_sls


def logprob_rows(quick: bool, bandwidth: float) -> List[Dict[str, Any]]:
    shapes = [(4096, 32768), (4096, 152064), (32768, 32768), (32768, 152064)]
    if quick:
        shapes = shapes[:2]
    rows = []
    trl_sls = trl_selective_log_softmax()
    for n, v in shapes:
        try:
            logits = torch.randn(n, v, device="cuda", dtype=torch.bfloat16)
        except torch.OutOfMemoryError:
            continue
        targets = torch.randint(0, v, (n,), device="cuda")
        floor_ms = n * v * 2 / bandwidth * 1e3
        row: Dict[str, Any] = {
            "op": "selective_log_softmax fwd",
            "shape": f"{n}x{v} bf16",
            "floor_ms": floor_ms,
        }
        row["sg_kernel_ms"] = bench(
            lambda _: _cuda.selective_logprobs(logits, targets, 1.0, False, check=False), 1
        )
        row["sg_ms"] = bench(lambda _: selective_log_softmax(logits, targets), 1)
        try:
            row["eager_ms"] = bench(
                lambda _: torch.log_softmax(logits.float(), -1).gather(-1, targets[:, None]), 1, reps=5
            )
        except torch.OutOfMemoryError:
            row["eager_ms"] = None
        if trl_sls is not None:
            try:
                row["trl_ms"] = bench(lambda _: trl_sls(logits, targets), 1, reps=5)
            except torch.OutOfMemoryError:
                row["trl_ms"] = None
        row["bandwidth_frac"] = floor_ms / row["sg_kernel_ms"]
        rows.append(row)
        print_row(row)
        # forward + backward
        x = logits.detach().requires_grad_(True)

        def fwd_bwd(_):
            selective_log_softmax(x, targets).sum().backward()
            x.grad = None

        def kernels_fwd_bwd(_):
            _, _, stats = _cuda.selective_logprobs(logits, targets, 1.0, False, check=False, keep_stats=True)
            _cuda.selective_logprobs_backward(logits, targets, 1.0, ones, None, check=False, stats=stats)

        ones = torch.ones(n, device="cuda")
        row2: Dict[str, Any] = {
            "op": "selective_log_softmax fwd+bwd",
            "shape": f"{n}x{v} bf16",
            "floor_ms": 3 * n * v * 2 / bandwidth * 1e3,
            "sg_ms": bench(fwd_bwd, 1, reps=5),
            "sg_kernel_ms": bench(kernels_fwd_bwd, 1, reps=5),
        }
        try:

            def eager_fwd_bwd(_):
                torch.log_softmax(x.float(), -1).gather(-1, targets[:, None]).sum().backward()
                x.grad = None

            row2["eager_ms"] = bench(eager_fwd_bwd, 1, reps=5)
        except torch.OutOfMemoryError:
            row2["eager_ms"] = None
        row2["bandwidth_frac"] = row2["floor_ms"] / row2["sg_kernel_ms"]
        rows.append(row2)
        print_row(row2)
        logits = x = None  # free before the next size
        torch.cuda.empty_cache()
    return rows


def token_advantage_rows(quick: bool, bandwidth: float) -> List[Dict[str, Any]]:
    """The broadcast ``a[:, None] * mask`` (verl's and TRL's token advantages) against torch."""
    rows = []
    for n, length in [(8192, 8192)] if not quick else [(2048, 4096)]:
        sets = [(torch.randn(n, device="cuda"), torch.rand(n, length, device="cuda") > 0.2) for _ in range(3)]
        out = torch.empty(n, length, device="cuda")
        row: Dict[str, Any] = {
            "op": "token_advantages",
            "shape": f"{n}x{length} bool",
            "floor_ms": n * length * 5 / bandwidth * 1e3,
            "sg_kernel_ms": bench(
                lambda i: _cuda.token_advantages(sets[i][0], sets[i][1], out, check=False), 3
            ),
            "sg_ms": bench(lambda i: sgpo_rs.token_advantages(sets[i][0], sets[i][1]), 3),
            "eager_ms": bench(lambda i: sets[i][0][:, None] * sets[i][1], 3),
        }
        row["bandwidth_frac"] = row["floor_ms"] / row["sg_kernel_ms"]
        rows.append(row)
        print_row(row)
    return rows


def fmt(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:8.3f}"


def print_row(row: Dict[str, Any]) -> None:
    """One line: the op and its kernels' device time against the floor, then other / op for each
    comparison (> 1: sgpo-rs faster), op against op, so host overheads count on both sides."""
    sg = row["sg_ms"]
    ratios = []
    for key in ("eager_ms", "compile_ms", "liger_ms", "trl_ms"):
        if row.get(key):
            ratios.append(f"{key[:-3]}/op {row[key] / sg:5.2f}x")
    nosync = f"op check=False {fmt(row['sg_nosync_ms'])} " if row.get("sg_nosync_ms") else ""
    if row.get("completion_ms"):
        # Logits to loss through completion_logprobs (the full logits, no slice in autograd).
        nosync += f"completion_logprobs {fmt(row['completion_ms'])} "
        if row.get("liger_ms"):
            ratios.append(f"liger/completion {row['liger_ms'] / row['completion_ms']:5.2f}x")
    print(
        f"{row['op']:32s} {row['shape']:28s} op {fmt(row.get('sg_ms'))} {nosync}"
        f"kernels {fmt(row.get('sg_kernel_ms'))} "
        f"floor {fmt(row['floor_ms'])} ms  kernels at {100 * row['bandwidth_frac']:5.1f}% of copy bw  "
        + "  ".join(ratios),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="the smaller sizes only")
    parser.add_argument("--out", help="write every number as JSON here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    name = torch.cuda.get_device_name()
    bandwidth = copy_bandwidth()
    BANDWIDTH[0] = bandwidth
    print(
        f"{name}; device-to-device copy {bandwidth / 1e12:.2f} TB/s (read + write); "
        f"sgpo-rs {sgpo_rs.__version__}"
    )
    rows = (
        loss_rows(args.quick, bandwidth)
        + token_advantage_rows(args.quick, bandwidth)
        + logprob_rows(args.quick, bandwidth)
        + logits_loss_rows(args.quick)
    )
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"device": name, "copy_bandwidth": bandwidth, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
