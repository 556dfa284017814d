"""Fused selective log-softmax (``sgpo_rs.torch.selective_log_softmax``) against what it replaces.

    python benches/logprob_compare.py            # N in {4k, 32k} tokens x V in {32k, 152k}
    python benches/logprob_compare.py --quick    # one small size: a CI smoke test
    python benches/logprob_compare.py --sizes 4096x32000 --dtype float32 --max-gb 8

Implementations (CPU, bfloat16 logits by default, temperature 0.7, ``(B, 1024, V)`` logits):
  sg     ``sgpo_rs.torch.selective_log_softmax`` (forward: one Rust pass; backward: writes dlogits)
  torch  ``torch.log_softmax(logits / T, -1).gather(-1, targets[..., None])`` in eager autograd
  trl    TRL's ``trl.trainer.utils.selective_log_softmax`` (its CPU path: a loop over the batch)
  sg_sliced      ``selective_log_softmax(logits[:, :-1], ids)`` on ``(B, 1025, V)`` logits, as TRL
                 slices them: autograd then fills and copies a full-size gradient
  sg_completion  ``sgpo_rs.torch.completion_logprobs(logits, ids)`` on the same logits: the
                 backward writes the full-size gradient once

For each size and implementation a fresh subprocess builds the inputs, makes one tiny warm-up call,
then measures the peak extra resident memory of one forward + backward (Linux VmHWM reset through
/proc/self/clear_refs, so the inputs are not counted) and the median wall time of the forward alone
(under ``torch.no_grad``) and of forward + ``.backward()``. Ratios are other / sg (> 1: sg faster or
smaller). A combination whose estimated peak (inputs + ~6 bytes per logit for the gradient) exceeds
``--max-gb`` runs its forward only; one whose inputs alone exceed it is skipped; both are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import bench, fmt_ratio, fmt_time, reset_peak, status_kb, table  # noqa: E402

SEQ = 1024
TEMPERATURE = 0.7
IMPLS = ("sg", "torch", "trl", "sg_sliced", "sg_completion")
# The implementations that take the model's full (B, 1025, V) logits, one more position than ids.
FULL_LOGITS = ("sg_sliced", "sg_completion")
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


def child(impl: str, n: int, v: int, dtype_name: str, repeats: int, backward: bool) -> None:
    """Runs in a fresh process; prints one JSON line."""
    import torch

    torch.manual_seed(0)
    dtype = getattr(torch, dtype_name)
    batch, seq = max(n // SEQ, 1), min(n, SEQ)
    logits = torch.empty(batch, seq + (impl in FULL_LOGITS), v, dtype=dtype)
    for b in range(batch):  # in place, so no float32 temporary of the full size
        logits[b].normal_(0.0, 3.0)
    targets = torch.randint(0, v, (batch, seq))

    if impl == "sg":
        from sgpo_rs.torch import selective_log_softmax as sg_op

        def op(x):
            return sg_op(x, targets, TEMPERATURE)
    elif impl == "sg_sliced":
        from sgpo_rs.torch import selective_log_softmax as sg_op

        def op(x):
            return sg_op(x[:, :-1], targets, TEMPERATURE)
    elif impl == "sg_completion":
        from sgpo_rs.torch import completion_logprobs

        def op(x):
            return completion_logprobs(x, targets, TEMPERATURE)
    elif impl == "torch":

        def op(x):
            return torch.log_softmax(x / TEMPERATURE, -1).gather(-1, targets[..., None])[..., 0]
    else:
        from trl.trainer.utils import selective_log_softmax as trl_op

        def op(x):
            return trl_op(x, targets, TEMPERATURE)

    def forward():
        with torch.no_grad():
            return op(logits)

    def forward_backward():
        x = logits.detach().requires_grad_(True)
        op(x).sum().backward()
        return x.grad

    # Tiny warm-up call: one-time setup (autograd engine, lazy imports) is not counted.
    tiny = logits[:1, : 2 + (impl in FULL_LOGITS)].detach().clone().requires_grad_(True)
    small_targets = targets
    targets = targets[:1, :2]
    op(tiny).sum().backward()
    targets = small_targets

    measured = forward_backward if backward else forward
    peak_mb: Optional[float] = None
    if reset_peak():
        before = status_kb("VmRSS")
        out = measured()
        peak_mb = (status_kb("VmHWM") - before) / 1024
        del out
    times: Dict[str, Optional[float]] = {"fwd": None, "fwd_bwd": None}
    runs = [("fwd", forward)] + ([("fwd_bwd", forward_backward)] if backward else [])
    for key, fn in runs:
        times[key] = bench(fn, repeats, warmup=0)[0]
    print(json.dumps({"peak_mb": peak_mb, **times}))


def run_child(impl: str, n: int, v: int, dtype: str, repeats: int, backward: bool) -> Optional[dict]:
    cmd = [sys.executable, __file__, "--child", impl, str(n), str(v), dtype, str(repeats), str(int(backward))]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  {impl}: failed ({proc.stderr.strip().splitlines()[-1:]})")
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse_sizes(text: str) -> List[Tuple[int, int]]:
    out = []
    for item in text.split(","):
        n, v = item.lower().split("x")
        out.append((int(n), int(v)))
    return out


def main() -> None:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--quick", action="store_true", help="one small size, 2 repeats")
    parser.add_argument("--sizes", help="NxV,... (tokens x vocabulary)")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPE_BYTES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-gb", type=float, default=8.0)
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        impl, n, v, dtype, repeats, backward = args.child
        child(impl, int(n), int(v), dtype, int(repeats), bool(int(backward)))
        return

    if args.sizes:
        sizes = parse_sizes(args.sizes)
    elif args.quick:
        sizes = [(1024, 32000)]
    else:
        sizes = [(4096, 32000), (4096, 152064), (32768, 32000), (32768, 152064)]
    repeats = 2 if args.quick else args.repeats
    elem = DTYPE_BYTES[args.dtype]
    print(f"selective log-softmax, {args.dtype} logits, T = {TEMPERATURE}, median of {repeats}")
    print("ratios are other / sg (> 1: sg is faster or needs less memory)")
    rows = []
    notes: List[str] = []
    for n, v in sizes:
        input_gb = n * v * elem / 1e9
        estimate_gb = input_gb + n * v * 6 / 1e9
        label = f"{n}x{v}"
        if input_gb > args.max_gb:
            print(f"{label}: skipped (the logits alone are {input_gb:.1f} GB > --max-gb {args.max_gb:g})")
            continue
        backward = estimate_gb <= args.max_gb
        if not backward:
            print(
                f"{label}: forward only (estimated peak with the gradient {estimate_gb:.1f} GB > "
                f"--max-gb {args.max_gb:g})"
            )
        results = {impl: run_child(impl, n, v, args.dtype, repeats, backward) for impl in IMPLS}
        sg_r = results["sg"] or {}
        for impl in IMPLS:
            r = results[impl]
            if r is None:
                continue
            peak = r.get("peak_mb")
            rows.append(
                [
                    f"{label} {impl}",
                    fmt_time(r["fwd"]),
                    fmt_ratio(r["fwd"], sg_r.get("fwd")),
                    fmt_time(r["fwd_bwd"]),
                    fmt_ratio(r["fwd_bwd"], sg_r.get("fwd_bwd")),
                    "-" if peak is None else f"{peak:.0f} MB",
                    fmt_ratio(peak, sg_r.get("peak_mb")),
                    "fwd+bwd" if backward else "fwd",
                ]
            )
        sliced, fused = results["sg_sliced"] or {}, results["sg_completion"] or {}
        if backward and sliced.get("fwd_bwd") and fused.get("fwd_bwd"):
            notes.append(
                f"{label}: sg_sliced / sg_completion fwd+bwd "
                f"{fmt_ratio(sliced['fwd_bwd'], fused['fwd_bwd'])}, peak extra "
                f"{fmt_ratio(sliced.get('peak_mb'), fused.get('peak_mb'))}"
            )
    if rows:
        table(["size impl", "fwd", "ratio", "fwd+bwd", "ratio", "peak extra", "ratio", "peak of"], rows)
    for note in notes:
        print(note)


if __name__ == "__main__":
    main()
