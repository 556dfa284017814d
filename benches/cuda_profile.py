"""Where the time of the CUDA policy loss goes, on a GPU (companion of ``cuda_compare.py``).

    python benches/cuda_profile.py [--shape 512x8192]

For each dtype and beta at the given shape, prints:

- the launch sequence's device time alone: ``sgpo_rs._cuda.policy_loss(check=False)`` captured in a
  CUDA graph and replayed, so no host time is counted (the number to compare with the floor);
- the same sequence launched eagerly (device time + the host time of the Python and Rust wrapper);
- the op as a training loop calls it (``sgpo_loss`` forward + backward, which reads the metrics);
- each kernel's device time in the op (torch.profiler, CUPTI), and the host functions that take
  the op's time (cProfile, by own time);
- then logits to loss (``--logits``, TRL's slicing): each kernel's device time, torch's too.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import statistics

import torch
from sgpo_rs import _cuda
from sgpo_rs.torch import _options as loss_options
from sgpo_rs.torch import selective_log_softmax, sgpo_loss


def timed(fn, reps: int = 30) -> float:
    """Median milliseconds of ``fn()`` between CUDA events."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def graph_ms(fn, replays: int = 50) -> float:
    """Device milliseconds of ``fn``'s launches, captured once in a CUDA graph and replayed."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return timed(lambda: [graph.replay() for _ in range(replays)], reps=5) / replays


def print_kernels(fn, calls: int, top: int) -> None:
    """Each kernel's device time per call of ``fn`` (torch.profiler, CUPTI: the library's own
    kernels and torch's), the ``top`` largest first."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    for event in sorted(prof.key_averages(), key=lambda e: -e.self_device_time_total)[:top]:
        if event.self_device_time_total > 0:
            print(
                f"  kernel {event.key[:60]:60s} x{event.count // calls:<3d} "
                f"{event.self_device_time_total / event.count:10.2f} us"
            )


def logits_inputs(batch: int, length: int, vocab: int):
    """``(logits (B, T + 1, V) bf16, ids, old_logp, ref_logp, advantages, mask)`` for logits to loss."""
    logits = torch.randn(batch, length + 1, vocab, device="cuda", dtype=torch.bfloat16)
    ids = torch.randint(0, vocab, (batch, length), device="cuda")
    old = torch.randn(batch, length, device="cuda").mul(0.1).sub(10)
    ref = old + 0.05 * torch.randn_like(old)
    adv = torch.randn(batch, device="cuda")
    mask = torch.rand(batch, length, device="cuda") > 0.1
    return logits, ids, old, ref, adv, mask


def copy_bandwidth() -> float:
    """Bytes read + written per second by a 1 GiB device-to-device copy."""
    x = torch.empty(1 << 28, device="cuda")
    y = torch.empty_like(x)
    return 2 * x.numel() * 4 / (timed(lambda: y.copy_(x)) * 1e-3)


def profile(batch: int, length: int, dtype: torch.dtype, beta: float, bandwidth: float, host: bool) -> None:
    lp = torch.randn(batch, length, device="cuda").mul(0.5).sub(1).to(dtype)
    old = (lp.float() + 0.3 * torch.randn_like(lp.float())).to(dtype)
    ref = (lp.float() + 0.3 * torch.randn_like(lp.float())).to(dtype) if beta else None
    adv = torch.randn(batch, device="cuda")
    mask = torch.rand(batch, length, device="cuda") > 0.2
    opts = loss_options(dict(beta=beta))
    size = 4 if dtype == torch.float32 else 2
    floor_ms = batch * length * (2 * size + 2 + 4 + (size if beta else 0)) / bandwidth * 1e3

    def launches():
        _cuda.policy_loss(lp, old, ref, adv, mask, opts, check=False)

    def op():
        leaf = lp.detach().requires_grad_(True)
        loss, _ = sgpo_loss(leaf, old, adv, mask, ref_logp=ref, beta=beta)
        loss.backward()

    try:
        graph = f"{graph_ms(launches):.4f}"
    except Exception as error:  # noqa: BLE001 - report, keep going
        graph = f"failed ({str(error)[:120]})"
    print(
        f"\n== {str(dtype)[6:]} beta={beta}: floor {floor_ms:.4f} ms, launch sequence in a graph "
        f"{graph} ms, eager {timed(launches):.4f} ms, op fwd+bwd {timed(op):.4f} ms"
    )
    print_kernels(op, calls=10, top=8)
    if host:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(200):
            op()
        torch.cuda.synchronize()
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(14)
        lines = [line for line in text.getvalue().splitlines() if line.strip()]
        print("  host, 200 calls (own time):")
        for line in lines[3:20]:
            print("  " + line[:150])


def profile_logits(batch: int, length: int, vocab: int) -> None:
    """Logits to loss as TRL slices them (``logits[:, :-1]``): each kernel's device time, including
    what autograd adds around the ops (the slice's backward fills and copies a full-size gradient)."""
    logits, ids, old, ref, adv, mask = logits_inputs(batch, length, vocab)

    def step():
        x = logits.detach().requires_grad_(True)
        lp = selective_log_softmax(x[:, :-1], ids)
        loss, _ = sgpo_loss(lp, old, adv, mask, ref_logp=ref, beta=0.04, loss_type="grpo")
        loss.backward()

    print(f"\n== logits -> loss {batch}x{length}x{vocab} bf16: op fwd+bwd {timed(step, reps=5):.3f} ms")
    print_kernels(step, calls=3, top=10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", default="512x8192")
    parser.add_argument("--logits", default="8x1024x152064", help="logits to loss shape; '' skips it")
    args = parser.parse_args()
    batch, length = (int(v) for v in args.shape.split("x"))
    bandwidth = copy_bandwidth()
    print(f"{torch.cuda.get_device_name()}; copy {bandwidth / 1e12:.2f} TB/s; shape {batch}x{length}")
    for dtype in (torch.float32, torch.bfloat16):
        for beta in (0.0, 0.04):
            profile(batch, length, dtype, beta, bandwidth, host=dtype == torch.float32 and beta == 0.0)
    if args.logits:
        profile_logits(*(int(v) for v in args.logits.split("x")))


if __name__ == "__main__":
    main()
