"""sgpo-rs against the code it replaces, and against the machine's memory-bandwidth floor.

    python benches/compare.py              # full run (about 1-2 minutes on 2 cores)
    python benches/compare.py --quick      # small sizes, no torch.compile: a CI smoke test
    python benches/compare.py --sizes 64x4096,256x8192 --no-compile

Sections:
  (a) ``sg.policy_loss`` (loss + dL/dlogp in one call) against TRL 1.16's dapo loss in torch eager
      autograd (forward + ``.backward()``), and torch.compile of the same function.
  (b) ``sg.group_advantages`` + ``sg.token_advantages`` against vectorised numpy.
  (c) the memory-bandwidth floor: bytes each kernel must move / measured copy bandwidth.
  (d) peak extra resident memory of one loss call, sg against torch eager.
  (e) the policy-loss targets in one table: compile/sg, eager/sg and sg against the floor, with
      sg both returning a fresh gradient array and writing into a reused ``out=`` buffer.

Times are wall-clock ``time.perf_counter`` of the public Python call (argument checks and output
allocation included), after warm-up calls; the tables show the median and the best of the
repeats, and ratios use medians. See benches/README.md for what each number means.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from functools import partial
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import sgpo_rs as sg

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import (  # noqa: E402
    bench,
    copy_bandwidth,
    cpu_name,
    fmt_ratio,
    fmt_time,
    reset_peak,
    status_kb,
    table,
)

MB = 1e6
GROUP = 8
EPS_CLIP = 0.2
ADV_EPS = 1e-4


# --------------------------------------------------------------------------------------------
# Timing and formatting


def parse_shapes(text: str) -> List[Tuple[int, int]]:
    shapes = []
    for part in text.split(","):
        b, t = part.lower().strip().split("x")
        shapes.append((int(b), int(t)))
    return shapes


# --------------------------------------------------------------------------------------------
# Inputs (generated in place so no large temporaries inflate the resident-memory numbers)


def loss_inputs(batch: int, length: int, seed: int = 0) -> Dict[str, np.ndarray]:
    """logp in [-3, 0), old_logp within +-0.3 of it (some tokens clip), ref within +-0.5,
    per-row advantages in [-2, 2), right-padded bool mask keeping 1/4 .. all of each row."""
    rng = np.random.default_rng(seed)
    logp = rng.random((batch, length), dtype=np.float32)
    logp *= -3.0
    old = rng.random((batch, length), dtype=np.float32)
    old -= 0.5
    old *= 0.6
    old += logp
    ref = rng.random((batch, length), dtype=np.float32)
    ref -= 0.5
    ref += logp
    adv = (rng.random(batch, dtype=np.float32) * 4.0 - 2.0).astype(np.float32)
    lengths = rng.integers(length // 4, length + 1, size=batch)
    mask = np.arange(length)[None, :] < lengths[:, None]
    return {"logp": logp, "old": old, "ref": ref, "adv": adv, "mask": mask}


def loss_bytes(batch: int, length: int, beta: float, mask_itemsize: int = 1) -> int:
    """Bytes one loss call must move: logp, old_logp (+ ref_logp) and the mask read, per-row
    advantages read, the float32 gradient written."""
    tokens = batch * length
    inputs = 3 if beta else 2
    return tokens * (4 * inputs + mask_itemsize + 4) + 4 * batch


# --------------------------------------------------------------------------------------------
# (a) policy loss


def trl_dapo_loss(torch, lp, old, ref, adv, mask, beta: float):
    """TRL 1.16 ``_compute_loss`` for loss_type="dapo", token level, one plain call
    (normaliser = max(sum M, 1)), following reference/semantics.md section 2."""
    log_ratio = lp - old
    coef_1 = torch.exp(log_ratio)
    coef_2 = torch.clamp(coef_1, 1 - EPS_CLIP, 1 + EPS_CLIP)
    per_token_loss1 = coef_1 * adv.unsqueeze(1)
    per_token_loss2 = coef_2 * adv.unsqueeze(1)
    per_token_loss = -torch.min(per_token_loss1, per_token_loss2)
    if beta != 0.0:
        per_token_kl = torch.exp(ref - lp) - (ref - lp) - 1
        per_token_kl = per_token_kl * coef_1  # use_bias_correction_kl=True
        per_token_loss = per_token_loss + beta * per_token_kl
    return (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)


def torch_step(torch, fn, tensors, beta):
    """One forward + backward; returns (loss, dL/dlogp)."""
    lp = tensors["logp"].detach().requires_grad_()
    loss = fn(torch, lp, tensors["old"], tensors["ref"], tensors["adv"], tensors["mask"], beta)
    loss.backward()
    return loss, lp.grad


def sg_step(x, beta, out=None):
    return sg.policy_loss(
        x["logp"], x["old"], x["adv"], x["mask"], ref_logp=x["ref"] if beta else None, beta=beta, out=out
    )


def section_loss(args, torch, results: Dict[str, float]) -> None:
    print("== (a) policy loss: sg.policy_loss vs TRL 1.16 dapo in torch (forward + backward) ==")
    print("dapo, token level, float32, bool mask, per-row advantages, epsilon 0.2.")
    print("sg: one call returns loss + grad. torch: eager autograd (loss.backward()) and torch.compile.")
    print("Ratios are torch median / sg median (> 1: sg is faster).")
    print()
    compiled = None
    compile_note = "skipped (--no-compile / --quick)"
    if args.compile:
        try:
            compiled = torch.compile(trl_dapo_loss, dynamic=False)
            compile_note = "ok (first compile includes any hit in torch's on-disk inductor cache)"
        except Exception as error:  # report any failure and carry on
            compile_note = f"unavailable: {type(error).__name__}: {error}"
    rows = []
    checks = []
    for batch, length in args.shapes:
        x = loss_inputs(batch, length)
        t = {k: torch.from_numpy(v) for k, v in x.items()}
        for beta in (0.0, 0.04):
            name = f"{batch}x{length} beta={beta:g}"
            out = sg_step(x, beta)
            loss_t, grad_t = torch_step(torch, trl_dapo_loss, t, beta)
            check = [
                name,
                f"{abs(out.loss - loss_t.item()):.1e}",
                f"{float(np.max(np.abs(out.grad - grad_t.numpy()))):.1e}",
                "-",
                "-",
            ]
            sg_med, sg_best = bench(partial(sg_step, x, beta), args.repeats)
            # A training loop reuses one gradient buffer (out=): no page faults of a fresh array.
            reused = np.empty((batch, length), dtype=np.float32)
            results[f"policy_loss out= {name}"] = bench(partial(sg_step, x, beta, reused), args.repeats)[0]
            eager_med, eager_best = bench(partial(torch_step, torch, trl_dapo_loss, t, beta), args.repeats)
            comp_med = comp_best = None
            comp_time = "-"
            if compiled is not None:
                try:
                    start = time.perf_counter()
                    loss_c, grad_c = torch_step(torch, compiled, t, beta)  # compiles this shape and beta
                    comp_time = f"{time.perf_counter() - start:.1f} s"
                    check[3] = f"{abs(out.loss - loss_c.item()):.1e}"
                    check[4] = f"{float(np.max(np.abs(out.grad - grad_c.numpy()))):.1e}"
                    comp_med, comp_best = bench(partial(torch_step, torch, compiled, t, beta), args.repeats)
                except Exception as error:
                    compile_note = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
                    compiled = None
            checks.append(check)
            results[f"policy_loss {name}"] = sg_med
            results[f"eager {name}"] = eager_med
            if comp_med is not None:
                results[f"compile {name}"] = comp_med
            rows.append(
                (
                    name,
                    fmt_time(sg_med),
                    fmt_time(sg_best),
                    fmt_time(eager_med),
                    fmt_time(eager_best),
                    fmt_ratio(eager_med, sg_med),
                    fmt_time(comp_med),
                    fmt_time(comp_best),
                    fmt_ratio(comp_med, sg_med),
                    comp_time,
                )
            )
    table(
        [
            "shape",
            "sg median",
            "sg best",
            "eager median",
            "eager best",
            "eager/sg",
            "compile median",
            "compile best",
            "compile/sg",
            "first compile",
        ],
        rows,
    )
    print(f"torch.compile: {compile_note}")
    print("Agreement of sg with torch (|loss difference|, max |grad difference|):")
    table(["shape", "eager loss", "eager grad", "compile loss", "compile grad"], checks)


# --------------------------------------------------------------------------------------------
# (b) advantages


def numpy_group_advantages(rewards: np.ndarray, group: int, eps: float = ADV_EPS) -> np.ndarray:
    """TRL's group advantages, vectorised: (r - mean) / (std_ddof1 + eps), nan_to_num."""
    r = rewards.reshape(-1, group)
    mean = r.mean(axis=1, keepdims=True)
    std = r.std(axis=1, ddof=1, keepdims=True)
    adv = np.nan_to_num((r - mean) / (std + eps), nan=0.0, posinf=0.0, neginf=0.0)
    return adv.reshape(-1).astype(np.float32)


def numpy_token_advantages(adv: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return adv[:, None] * mask  # float32 * bool -> float32 (N, L)


def section_advantages(args, results: Dict[str, float]) -> None:
    rows_n, length = args.adv_shape
    print(f"== (b) advantages: sg vs vectorised numpy, N={rows_n}, group {GROUP}, L={length} ==")
    print("group_advantages: float64 rewards -> float32 (N,). token_advantages: float32 (N,) x bool (N, L)")
    print("-> float32 (N, L), a fresh output array per call for both.")
    print()
    rng = np.random.default_rng(1)
    rewards = rng.random(rows_n)
    lengths = rng.integers(length // 4, length + 1, size=rows_n)
    mask = np.arange(length)[None, :] < lengths[:, None]
    adv = sg.group_advantages(rewards, group_size=GROUP)
    ref = numpy_group_advantages(rewards, GROUP)
    err_group = float(np.max(np.abs(adv - ref)))
    err_token = float(np.max(np.abs(sg.token_advantages(adv, mask) - numpy_token_advantages(adv, mask))))
    out_buffer = np.ones((rows_n, length), dtype=np.float32)

    cases = [
        (
            "group_advantages",
            lambda: sg.group_advantages(rewards, group_size=GROUP),
            lambda: numpy_group_advantages(rewards, GROUP),
        ),
        (
            "token_advantages",
            lambda: sg.token_advantages(adv, mask),
            lambda: numpy_token_advantages(adv, mask),
        ),
        (
            # A training loop can reuse the (N, L) buffer: no page faults of a fresh allocation.
            "token_advantages out=",
            lambda: sg.token_advantages(adv, mask, out=out_buffer),
            lambda: np.multiply(adv[:, None], mask, out=out_buffer),
        ),
        (
            "both (rewards -> (N, L))",
            lambda: sg.token_advantages(sg.group_advantages(rewards, group_size=GROUP), mask),
            lambda: numpy_token_advantages(numpy_group_advantages(rewards, GROUP), mask),
        ),
    ]
    rows = []
    for name, sg_fn, np_fn in cases:
        sg_med, sg_best = bench(sg_fn, args.repeats)
        np_med, np_best = bench(np_fn, args.repeats)
        results[name] = sg_med
        rows.append(
            (
                name,
                fmt_time(sg_med),
                fmt_time(sg_best),
                fmt_time(np_med),
                fmt_time(np_best),
                fmt_ratio(np_med, sg_med),
            )
        )
    table(["kernel", "sg median", "sg best", "numpy median", "numpy best", "numpy/sg"], rows)
    print(f"max |sg - numpy|: group_advantages {err_group:.1e}, token_advantages {err_token:.1e}")
    print()


# --------------------------------------------------------------------------------------------
# (c) bandwidth floor


def section_floor(args, results: Dict[str, float]) -> None:
    threads = len(os.sched_getaffinity(0))
    single, multi, fault_cost = copy_bandwidth(args.copy_mb * 2**20, args.repeats, threads)
    bandwidth = max(single, multi)
    print("== (c) memory-bandwidth floor ==")
    print(
        f"np.copyto of {args.copy_mb} MiB arrays, best of {args.repeats}, read + write counted: "
        f"1 thread {single / 1e9:.1f} GB/s, {threads} threads {multi / 1e9:.1f} GB/s; floor uses "
        f"{bandwidth / 1e9:.1f} GB/s. A copy into a fresh array costs {fault_cost * 1e9:.3f} s/GB more."
    )
    print("floor = bytes read + written / bandwidth. +alloc adds the fresh-array cost for the bytes written")
    print("(every sg call returns a new array). measured = the sg median from (a)/(b).")
    print()

    # sgpo_rewards is not compared against anything else; time it here for the table.
    n = args.adv_shape[0]
    rng = np.random.default_rng(2)
    rewards = (rng.random(n) < 0.3).astype(np.float64)
    num_steps = rng.integers(1, 13, size=n)
    first_error = rng.integers(-1, num_steps)
    results["sgpo_rewards"] = bench(
        lambda: sg.sgpo_rewards(rewards, first_error, num_steps, group_size=GROUP), args.repeats
    )[0]

    rows_n, length = args.adv_shape
    # (name, bytes read, bytes written, measured seconds)
    kernels = [
        (f"sgpo_rewards N={n}", 24 * n, 10 * n, results["sgpo_rewards"]),
        (f"group_advantages N={n}", 8 * n, 4 * n, results["group_advantages"]),
        (
            f"token_advantages {rows_n}x{length}",
            4 * rows_n + rows_n * length,
            4 * rows_n * length,
            results["token_advantages"],
        ),
        (
            f"token_advantages out= {rows_n}x{length}",
            4 * rows_n + rows_n * length,
            4 * rows_n * length,
            results["token_advantages out="],
        ),
    ]
    for batch, length in args.shapes:
        for beta in (0.0, 0.04):
            name = f"policy_loss {batch}x{length} beta={beta:g}"
            written = 4 * batch * length
            kernels.append((name, loss_bytes(batch, length, beta) - written, written, results[name]))
            out_name = f"policy_loss out= {batch}x{length} beta={beta:g}"
            if out_name in results:
                read = loss_bytes(batch, length, beta) - written
                kernels.append((out_name, read, written, results[out_name]))
    rows = []
    floors: Dict[str, Tuple[float, float]] = {}
    for name, read, written, measured in kernels:
        floor = (read + written) / bandwidth
        floor_alloc = floor + written * fault_cost
        floors[name] = (floor, floor_alloc)
        rows.append(
            (
                name,
                f"{(read + written) / MB:.2f} MB",
                fmt_time(floor),
                fmt_time(floor_alloc),
                fmt_time(measured),
                fmt_ratio(measured, floor),
                fmt_ratio(measured, floor_alloc),
                f"{(read + written) / measured / 1e9:.1f} GB/s",
            )
        )
    table(
        ["kernel", "bytes r+w", "floor", "floor+alloc", "measured", "meas/floor", "meas/+alloc", "effective"],
        rows,
    )
    print("Bytes: sgpo_rewards reads rewards f64, first_error and num_steps i64, writes rewards,")
    print("credit f32 and two bool flags (34 B/row); group_advantages reads f64, writes f32 (12 B/row);")
    print("token_advantages reads (N,) f32 + the bool mask, writes f32 (5 B/token); policy_loss reads")
    print("logp, old_logp (+ ref_logp) f32, the bool mask and (B,) advantages, writes the f32 grad")
    print("(13 B/token, 17 with ref_logp). policy_loss out= writes into a reused buffer (no fresh array).")
    print()
    return floors


# --------------------------------------------------------------------------------------------
# (e) targets


TARGET_COMPILE = 1.5
TARGET_EAGER = 10.0
TARGET_FLOOR = 3.0


def section_targets(args, results: Dict[str, float], floors: Dict[str, Tuple[float, float]]) -> None:
    """The policy-loss targets in one table, all from this run: torch.compile / sg and torch eager
    / sg (medians, sg returning a fresh gradient array as torch does, and sg writing into a
    reused ``out=`` buffer), and sg against the copy-bandwidth floor."""
    print("== (e) policy loss targets (this run) ==")
    print(
        f"targets: compile/sg >= {TARGET_COMPILE}x, eager/sg >= {TARGET_EAGER:g}x; at 512x8192 sg within "
        f"{TARGET_FLOOR:g}x of the floor (out= against the floor, fresh array against floor+alloc)."
    )
    print()
    rows = []
    verdicts = []
    for batch, length in args.shapes:
        for beta in (0.0, 0.04):
            name = f"{batch}x{length} beta={beta:g}"
            sg_fresh = results[f"policy_loss {name}"]
            sg_out = results.get(f"policy_loss out= {name}")
            eager = results.get(f"eager {name}")
            comp = results.get(f"compile {name}")
            floor, floor_alloc = floors[f"policy_loss {name}"]
            checks = [
                ("compile/sg", comp, sg_fresh, TARGET_COMPILE),
                ("eager/sg", eager, sg_fresh, TARGET_EAGER),
            ]
            for label, num, den, target in checks:
                if num is not None:
                    verdicts.append((name, label, num / den >= target))
            if batch * length >= 512 * 8192:
                verdicts.append((name, "sg/floor+alloc", sg_fresh / floor_alloc <= TARGET_FLOOR))
                if sg_out is not None:
                    verdicts.append((name, "sg out=/floor", sg_out / floor <= TARGET_FLOOR))
            rows.append(
                (
                    name,
                    fmt_time(sg_fresh),
                    fmt_time(sg_out),
                    fmt_ratio(comp, sg_fresh),
                    fmt_ratio(comp, sg_out),
                    fmt_ratio(eager, sg_fresh),
                    fmt_ratio(eager, sg_out),
                    fmt_ratio(sg_fresh, floor_alloc),
                    fmt_ratio(sg_out, floor),
                )
            )
    table(
        [
            "shape",
            "sg",
            "sg out=",
            "compile/sg",
            "compile/sg out=",
            "eager/sg",
            "eager/sg out=",
            "sg/floor+alloc",
            "sg out=/floor",
        ],
        rows,
    )
    missed = [f"{name} {label}" for name, label, ok in verdicts if not ok]
    met = sum(ok for _, _, ok in verdicts)
    print(f"targets met: {met} of {len(verdicts)} (ratios use the fresh-array sg; floor checks as stated)")
    if missed:
        print("missed: " + "; ".join(missed))
    print()


# --------------------------------------------------------------------------------------------
# (d) memory


def memory_child(spec: str) -> None:
    """Runs one loss call in this fresh process and prints its peak extra resident memory."""
    kind, shape, beta_text = spec.split(":")
    batch, length = parse_shapes(shape)[0]
    beta = float(beta_text)
    x = loss_inputs(batch, length)
    if kind == "torch":
        import torch

        t = {k: torch.from_numpy(v) for k, v in x.items()}  # zero-copy views of the same inputs

        def call():
            return torch_step(torch, trl_dapo_loss, t, beta)
    else:

        def call():
            return sg_step(x, beta)

    # One tiny call first: one-time setup (torch's autograd engine, lazy imports) is not counted.
    tiny = loss_inputs(1, 8)
    if kind == "torch":
        torch_step(torch, trl_dapo_loss, {k: torch.from_numpy(v) for k, v in tiny.items()}, beta)
    else:
        sg_step(tiny, beta)
    if reset_peak():
        before = status_kb("VmRSS")
        out = call()
        peak = status_kb("VmHWM")
        method = "VmHWM"
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = call()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        method = "ru_maxrss"
    del out
    print(json.dumps({"extra_kb": peak - before, "method": method}))


def section_memory(args) -> None:
    print("== (d) peak extra resident memory of one loss call (forward + backward) ==")
    print("Each number comes from a fresh subprocess: inputs are built first, then the peak resident set")
    print("(Linux VmHWM, reset through /proc/self/clear_refs; ru_maxrss otherwise) during one call minus the")
    print("resident set just before it. It counts every page the call touches: outputs (sg: the (B, T) f32")
    print("grad; torch: the grad plus autograd's saved intermediates) and temporaries, whatever allocator.")
    print("A 1x8 call runs first, so one-time setup (torch's autograd engine, ~10 MB) is not counted.")
    print()
    rows = []
    for batch, length in args.shapes:
        for beta in (0.0, 0.04):
            grad_mb = 4 * batch * length / MB
            got = {}
            for kind in ("sg", "torch"):
                proc = subprocess.run(
                    [sys.executable, __file__, "--memory-child", f"{kind}:{batch}x{length}:{beta}"],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if proc.returncode != 0:
                    got[kind] = None
                    print(f"memory child {kind} failed: {proc.stderr.strip().splitlines()[-1:]}")
                    continue
                got[kind] = json.loads(proc.stdout.strip().splitlines()[-1])["extra_kb"] * 1024 / MB
            rows.append(
                (
                    f"{batch}x{length} beta={beta:g}",
                    f"{grad_mb:.1f} MB",
                    "-" if got["sg"] is None else f"{got['sg']:.1f} MB",
                    "-" if got["torch"] is None else f"{got['torch']:.1f} MB",
                    fmt_ratio(got["torch"], got["sg"]),
                )
            )
    table(["shape", "grad (B,T) f32", "sg extra", "torch eager extra", "torch/sg"], rows)


# --------------------------------------------------------------------------------------------


def machine(torch) -> None:
    cpu = cpu_name()
    usable = len(os.sched_getaffinity(0))
    print("== machine ==")
    print(f"cpu: {cpu}; {os.cpu_count()} logical cores, {usable} usable by this process")
    print(f"python {platform.python_version()}, numpy {np.__version__}, sgpo_rs {sg.__version__}")
    torch_text = (
        "not installed"
        if torch is None
        else f"{torch.__version__}, {torch.get_num_threads()} intra-op threads"
    )
    print(f"torch: {torch_text}")
    rayon = os.environ.get("RAYON_NUM_THREADS", "unset (all cores)")
    print(f"sgpo_rs threads: rayon, RAYON_NUM_THREADS={rayon}")
    simd = os.environ.get("SGPO_RS_SIMD", "unset")
    best = sg._core.cpu_simd_level()
    print(f"sgpo_rs SIMD level: {sg._core.simd_level()} (the CPU's best {best}, SGPO_RS_SIMD={simd})")
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("numpy: single-threaded elementwise ops")
    print()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 repeats, no torch.compile")
    parser.add_argument("--sizes", help="policy-loss shapes BxT, comma-separated (default 64x4096,512x8192)")
    parser.add_argument("--adv-shape", help="advantage shape NxL (default 8192x8192)")
    parser.add_argument("--repeats", type=int, help="timed repeats per measurement (default 9, quick 3)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child)
        return 0

    args.shapes = parse_shapes(args.sizes or ("8x256,32x1024" if args.quick else "64x4096,512x8192"))
    args.adv_shape = parse_shapes(args.adv_shape or ("1024x512" if args.quick else "8192x8192"))[0]
    args.repeats = args.repeats or (3 if args.quick else 9)
    args.copy_mb = 64 if args.quick else 512
    args.compile = not (args.no_compile or args.quick)

    try:
        import torch
    except ImportError:
        torch = None
    start = time.perf_counter()
    machine(torch)
    print("Note: timings are wall-clock on a shared machine; other processes add noise.")
    print()
    results: Dict[str, float] = {}
    if torch is None:
        print("torch is not installed: skipping (a) and (d); (c) times policy_loss alone.")
        for batch, length in args.shapes:
            x = loss_inputs(batch, length)
            for beta in (0.0, 0.04):
                results[f"policy_loss {batch}x{length} beta={beta:g}"] = bench(
                    partial(sg_step, x, beta), args.repeats
                )[0]
    else:
        section_loss(args, torch, results)
    section_advantages(args, results)
    floors = section_floor(args, results)
    if torch is not None and not args.no_memory:
        section_memory(args)
    section_targets(args, results, floors)
    print(f"total {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
