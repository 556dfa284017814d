"""Tables, plots and EXPERIMENTS.md from the JSON of ``experiment_arith.py``: every number in the
report is computed here from that file.

    python examples/experiment_report.py docs/experiment_arith_low.json docs/experiment_arith_medium.json
    python examples/experiment_arith.py --report docs/experiment_arith_*.json   # the same
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = {
    "grpo": "GRPO (TRL GRPOTrainer)",
    "sgpo_prefix": "SGPO, prefix rule",
    "sgpo_logistic": "SGPO, logistic rule (paper preset)",
    "sgpo_shuffled": "SGPO, shuffled verdicts (control)",
    "sgpo_noisy": "SGPO, noisy judge (control)",
}
COLORS = {
    "grpo": "#444444",
    "sgpo_prefix": "#1f77b4",
    "sgpo_logistic": "#2ca02c",
    "sgpo_shuffled": "#ff7f0e",
    "sgpo_noisy": "#d62728",
}
# Two-sided 95% Student t quantiles by degrees of freedom (no scipy dependency for a table).
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def mean_ci(values: Sequence[float]) -> Tuple[float, float]:
    """Mean and the half-width of its 95% t interval over seeds (nan half-width for one seed)."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    if x.size == 1:
        return float(x[0]), float("nan")
    t = T95.get(x.size - 1, 1.96)
    return float(x.mean()), float(t * x.std(ddof=1) / math.sqrt(x.size))


def fmt(m: float, h: float, digits: int = 3) -> str:
    if math.isnan(m):
        return "n/a"
    if math.isnan(h):
        return f"{m:.{digits}f}"
    return f"{m:.{digits}f} ± {h:.{digits}f}"


def arms_of(results: Dict[str, Any]) -> List[str]:
    return [a for a in results["config"]["arms"] if any(r["arm"] == a for r in results["runs"])]


def runs_of(results: Dict[str, Any], arm: str) -> List[Dict[str, Any]]:
    return sorted((r for r in results["runs"] if r["arm"] == arm), key=lambda r: r["seed"])


def eval_at(run: Dict[str, Any], step: int, key: str = "greedy") -> float:
    for e in run["evals"]:
        if e["step"] == step:
            return float(e[key])
    return float("nan")


def eval_steps(results: Dict[str, Any]) -> List[int]:
    return sorted({e["step"] for r in results["runs"] for e in r["evals"]})


def step_series(run: Dict[str, Any], key: str) -> np.ndarray:
    return np.array([s.get(key, np.nan) for s in run["steps"]], dtype=float)


def window_mean(run: Dict[str, Any], key: str, lo: int, hi: int) -> float:
    """Mean of a per-step metric over steps lo..hi (1-based, inclusive)."""
    vals = [s.get(key, np.nan) for s in run["steps"] if lo <= s["step"] <= hi]
    vals = [v for v in vals if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def steps_to(run: Dict[str, Any], threshold: float) -> Optional[int]:
    for e in sorted(run["evals"], key=lambda e: e["step"]):
        if e["greedy"] >= threshold:
            return int(e["step"])
    return None


def paired(results: Dict[str, Any], arm: str, fn, base: str = "grpo") -> Tuple[float, float, int]:
    """Mean and CI of ``fn(run of arm) - fn(run of base)`` over the seeds both ran (paired: the same
    seed gives both arms the same data order and the same first samples)."""
    other = {r["seed"]: r for r in runs_of(results, base)}
    diffs = [fn(r) - fn(other[r["seed"]]) for r in runs_of(results, arm) if r["seed"] in other]
    m, h = mean_ci(diffs)
    return m, h, len(diffs)


def verdict(m: float, h: float) -> str:
    if math.isnan(m) or math.isnan(h):
        return "undetermined (one seed)"
    if m - h > 0:
        return "better than GRPO"
    if m + h < 0:
        return "worse than GRPO"
    return "no difference from GRPO detectable"


# ----------------------------------------------------------------------------------------------


def plot(results: Dict[str, Any], out: str, name: str) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = arms_of(results)
    steps = eval_steps(results)
    paths = []

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for arm in arms:
        runs = runs_of(results, arm)
        for ax, key, title in zip(
            axes,
            ("greedy", "pass_at_k", "sample_acc"),
            (
                "held-out greedy accuracy",
                f"held-out pass@{results['config']['pass_k']}",
                "held-out accuracy of one sample (T=1)",
            ),
        ):
            y = np.array([[eval_at(r, s, key) for s in steps] for r in runs])
            m = np.nanmean(y, axis=0)
            ax.plot(steps, m, color=COLORS.get(arm), label=LABELS.get(arm, arm), lw=1.8)
            if len(runs) > 1:
                ax.fill_between(
                    steps, np.nanmin(y, axis=0), np.nanmax(y, axis=0), color=COLORS.get(arm), alpha=0.12
                )
            ax.set_title(title)
            ax.set_xlabel("RL step")
    axes[0].set_ylabel("accuracy (mean over seeds; band: min-max)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out, f"experiment_arith_{name}_accuracy.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    width = max(1, min(10, results["config"]["steps"] // 10))
    for arm in arms:
        runs = runs_of(results, arm)
        for ax, key in zip(axes, ("all_negative_frac", "sgpo/diversified_frac")):
            y = np.array([step_series(r, key) for r in runs])
            if np.all(np.isnan(y)):
                continue
            kernel = np.ones(width) / width
            smooth = np.array([np.convolve(row, kernel, mode="valid") for row in y])
            x = np.arange(1, y.shape[1] + 1)[width - 1 :]
            ax.plot(x, smooth.mean(axis=0), color=COLORS.get(arm), label=LABELS.get(arm, arm), lw=1.8)
            if len(runs) > 1:
                ax.fill_between(x, smooth.min(axis=0), smooth.max(axis=0), color=COLORS.get(arm), alpha=0.12)
    axes[0].set_title(f"all-negative groups in the training batch ({width}-step moving mean)")
    axes[1].set_title(f"diversified groups (SGPO arms; {width}-step moving mean)")
    for ax in axes:
        ax.set_xlabel("RL step")
        ax.set_ylabel("fraction of groups")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out, f"experiment_arith_{name}_all_negative.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    return paths


def summarize(results: Dict[str, Any]) -> Dict[str, Any]:
    """The numbers the report quotes, as a dict (the test checks their sanity)."""
    cfg = results["config"]
    arms = arms_of(results)
    steps = eval_steps(results)
    last = steps[-1]
    early = min((s for s in steps if s > 0), key=lambda s: abs(s - last / 4), default=last)
    start = float(np.mean([eval_at(r, 0) for r in results["runs"]]))
    threshold = start + cfg["threshold_gain"]
    early_window = (1, max(1, cfg["steps"] // 4))
    late_window = (cfg["steps"] - max(1, cfg["steps"] // 4) + 1, cfg["steps"])
    table = {}
    for arm in arms:
        runs = runs_of(results, arm)
        reached = [steps_to(r, threshold) for r in runs]
        row = {
            "seeds": len(runs),
            "greedy": {str(s): mean_ci([eval_at(r, s) for r in runs]) for s in steps},
            "pass_at_k": mean_ci([eval_at(r, last, "pass_at_k") for r in runs]),
            "sample_acc": mean_ci([eval_at(r, last, "sample_acc") for r in runs]),
            "reached": sum(x is not None for x in reached),
            "steps_to_threshold": mean_ci([x for x in reached if x is not None]),
            "train_acc_early": mean_ci([window_mean(r, "accuracy", *early_window) for r in runs]),
            "train_acc_late": mean_ci([window_mean(r, "accuracy", *late_window) for r in runs]),
            "all_negative_early": mean_ci([window_mean(r, "all_negative_frac", *early_window) for r in runs]),
            "all_negative_late": mean_ci([window_mean(r, "all_negative_frac", *late_window) for r in runs]),
            "diversified": mean_ci([window_mean(r, "sgpo/diversified_frac", 1, cfg["steps"]) for r in runs]),
            "mean_credit": mean_ci([window_mean(r, "sgpo/mean_credit", 1, cfg["steps"]) for r in runs]),
            "kl_last": mean_ci([window_mean(r, "kl", *late_window) for r in runs]),
            "wall_per_step": mean_ci([window_mean(r, "wall_s", 1, cfg["steps"]) for r in runs]),
            "judged_per_step": mean_ci([window_mean(r, "judged", 1, cfg["steps"]) for r in runs]),
            "judge_calls": mean_ci([float(r["judge_calls"]) for r in runs]),
            "by_steps_last": {
                k: mean_ci([r["evals"][-1]["by_steps"][k] for r in runs])
                for k in runs[0]["evals"][-1]["by_steps"]
            },
            "by_steps_first": {
                k: mean_ci([r["evals"][0]["by_steps"][k] for r in runs])
                for k in runs[0]["evals"][0]["by_steps"]
            },
        }
        if arm != "grpo" and any(r["arm"] == "grpo" for r in results["runs"]):
            row["diff_early"] = paired(results, arm, lambda r: eval_at(r, early))
            row["diff_last"] = paired(results, arm, lambda r: eval_at(r, last))
            row["diff_auc"] = paired(results, arm, lambda r: float(np.mean([eval_at(r, s) for s in steps])))
            row["diff_passk"] = paired(results, arm, lambda r: eval_at(r, last, "pass_at_k"))
            row["diff_train_late"] = paired(results, arm, lambda r: window_mean(r, "accuracy", *late_window))
            row["diff_sample"] = paired(results, arm, lambda r: eval_at(r, last, "sample_acc"))
        table[arm] = row
    information = {}
    if "sgpo_prefix" in arms:
        for control in ("sgpo_shuffled", "sgpo_noisy"):
            if control in arms:
                information[control] = paired(
                    results,
                    "sgpo_prefix",
                    lambda r: float(np.mean([eval_at(r, x) for x in steps])),
                    base=control,
                )
    return {
        "information": information,
        "arms": arms,
        "steps": steps,
        "early": early,
        "last": last,
        "start": start,
        "threshold": threshold,
        "early_window": early_window,
        "late_window": late_window,
        "table": table,
    }


def _diff(c: Tuple[float, float, int]) -> str:
    return f"{c[0]:+.3f} ± {c[1]:.3f}" if not math.isnan(c[1]) else f"{c[0]:+.3f}"


def _claim(s: Dict[str, Any]) -> List[str]:
    """Plain sentences on the paper's claim, decided by the confidence intervals."""
    t = s["table"]
    lines = []
    if "sgpo_prefix" not in t or "diff_early" not in t["sgpo_prefix"]:
        return ["The study did not run both GRPO and SGPO (prefix), so the claim is not tested here."]
    for arm in s["arms"]:
        if "diff_early" not in t[arm]:
            continue
        e, last, auc = t[arm]["diff_early"], t[arm]["diff_last"], t[arm]["diff_auc"]
        lines.append(
            f"- {LABELS[arm]} minus GRPO, held-out greedy accuracy ({e[2]} paired seeds): step {s['early']} "
            f"{_diff(e)} ({verdict(e[0], e[1])}); step {s['last']} {_diff(last)} "
            f"({verdict(last[0], last[1])}); "
            f"mean over the evaluations {_diff(auc)} ({verdict(auc[0], auc[1])})."
        )
    info = s.get("information", {})
    for control, c in info.items():
        lines.append(
            f"- SGPO, prefix rule minus {LABELS[control]}, mean over the evaluations: {_diff(c)} "
            f"({verdict(c[0], c[1]).replace('GRPO', 'the control')})."
        )
    if any(math.isnan(t[a]["diff_early"][1]) for a in ("sgpo_prefix", "sgpo_logistic") if a in t):
        lines.append("- **The paper's claim: undetermined** - one seed gives no interval.")
        return lines
    early_gain = [
        arm
        for arm in ("sgpo_prefix", "sgpo_logistic")
        if arm in t and t[arm]["diff_early"][0] - t[arm]["diff_early"][1] > 0
    ]
    any_gain = [
        arm
        for arm in ("sgpo_prefix", "sgpo_logistic")
        if arm in t and any(t[arm][k][0] - t[arm][k][1] > 0 for k in ("diff_early", "diff_last", "diff_auc"))
    ]
    if early_gain:
        faded = [a for a in early_gain if t[a]["diff_last"][0] - t[a]["diff_last"][1] <= 0]
        lines.append(
            f"- **The paper's claim, part 1 (SGPO helps early, while all-negative groups are common): held** "
            f"for {' and '.join(LABELS[a] for a in early_gain)} at step {s['early']}"
            + (
                f"; at step {s['last']} the difference is no longer detectable for "
                f"{' and '.join(LABELS[a] for a in faded)} (GRPO caught up)."
                if faded
                else "."
            )
        )
    else:
        lines.append(
            "- **The paper's claim, part 1 (SGPO helps early, while all-negative groups are common): not "
            "seen in this regime** - no SGPO rule's early accuracy differs from GRPO's by more than the "
            "seed-to-seed spread (the 95% intervals include zero)."
        )
    if not any_gain:
        lines.append(
            "- **Part 2 (the gain comes from the judge's information, not from reward noise): not testable "
            "here** - there is no gain over GRPO to attribute."
        )
    else:
        parts = []
        for control, c in info.items():
            beaten = c[0] - c[1] > 0
            parts.append(
                f"against the {LABELS[control].split(', ')[1].replace(' (control)', '')} control: "
                + ("held (the real judge is better)" if beaten else "not shown (the interval includes zero)")
            )
        lines.append(
            "- **Part 2 (the gain comes from the judge's information, not from noise)**: "
            + "; ".join(parts)
            + "."
        )
    return lines


def regime_of(results: Dict[str, Any]) -> str:
    """The regime a JSON belongs to: the default study's regime whose config it has, else its label."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import experiment_arith

    if not results.get("smoke"):
        for name, cfg in experiment_arith.REGIMES.items():
            if results["config"] == json.loads(json.dumps(cfg)):
                return name
    return str(results.get("regime", "custom"))


def is_default(everything: List[Dict[str, Any]]) -> bool:
    """Whether the JSONs are the default study's (the written discussion is about that run only)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import experiment_arith

    return sorted(regime_of(r) for r in everything) == sorted(experiment_arith.REGIMES)


def _setup(everything: List[Dict[str, Any]]) -> List[str]:
    results = everything[0]
    cfg = results["config"]
    k = cfg["pass_k"]
    diffs = ", ".join(f"{n} steps/±{o}" for n, o in results["difficulties"])
    warm = "; ".join(
        f"{regime_of(r)}: {r['config']['warmup_steps']} steps, loss {r['warmup']['loss_first']:.2f} -> "
        f"{r['warmup']['loss_last']:.3f}, held-out greedy accuracy {summarize(r)['start']:.3f}"
        for r in everything
    )
    return [
        f"- **Task**: arithmetic chains, e.g. `{results['examples']['prompt']}` -> "
        f"`{results['examples']['solution'].replace(chr(10) + chr(10), ' ⏎⏎ ')}` (one step per paragraph; "
        f"the last step's result is the answer). Difficulty mix (number of steps / largest +- operand): "
        f"{diffs}; `*` by 2 or 3; values stay in 0..199. Reward: 1 if the last integer of the completion "
        f"is the result. Disjoint sets: {results['sets']['warmup']} warm-up, "
        f"{results['sets']['train']} RL-train, {results['sets']['eval']} held-out problems.",
        "- **Judge**: `sgpo_rs.judge.RuleJudge` (exact: checks every step, returns the first wrong one); "
        "a response that stops early is scored against the problem's number of operations, not its own "
        "(see the discussion).",
        f"- **Model**: Qwen2, {cfg['layers']} layers, hidden size {cfg['hidden']}, random init, word-level "
        f"tokenizer built with `tokenizers` (each number one token). Supervised warm-up on correct chains "
        f"(batch {cfg['warmup_batch']}, lr {cfg['warmup_lr']}), one checkpoint per regime that every RL run "
        f"of the regime starts from - {warm}.",
        f"- **RL**: {cfg['steps']} steps, {cfg['prompts_per_step']} prompts x {cfg['num_generations']} "
        f"completions per step, lr {cfg['lr']} (constant), KL beta {cfg['beta']}, temperature 1, max "
        f"{cfg['max_completion_length']} completion tokens, TRL 1.16 defaults otherwise (loss `dapo`, group "
        f"std scaling). Seeds {cfg['seeds']} for every arm (the seed sets TRL's sampling and data order, "
        f"so arms are compared paired by seed). SGPO credit: prefix rule `{cfg['credit_scale']} * k/n`; "
        f"logistic rule `sgpo_preset='paper'` (`1.0 * sigmoid(5 (k/n - 0.5))`); the controls use the prefix "
        f"rule with the verdicts shuffled within each judging call (same credit distribution, no "
        f"information), or each replaced with probability {cfg['noise']} by a uniformly random step.",
        f"- **Evaluation** every {cfg['eval_every']} steps on the held-out set: greedy accuracy (all "
        f"{results['sets']['eval']} problems); pass@{k} and one-sample accuracy from {k} samples at T=1 "
        f"on the first {cfg['n_passk']}.",
        "- **Cost**: "
        + "; ".join(
            f"{regime_of(r)}: {len(r['runs'])} runs on {r['workers']} worker processes (one torch thread "
            f"each), {r['wall_s'] / 60:.1f} min wall time incl. the warm-up ({r['warmup']['wall_s']:.0f} s)"
            for r in everything
        )
        + f"; {sum(r['wall_s'] for r in everything) / 60:.1f} min in all, on 2 CPU cores shared with "
        "other work.",
        "",
    ]


def _headline(everything: List[Dict[str, Any]], summaries: List[Dict[str, Any]]) -> List[str]:
    out = [
        "| regime | start greedy acc. | GRPO all-negative, early | SGPO prefix - GRPO, early | "
        "SGPO prefix - GRPO, last | SGPO logistic - GRPO, early | SGPO logistic - GRPO, last | "
        "SGPO prefix - shuffled, mean | SGPO prefix - noisy, mean |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r, s in zip(everything, summaries):
        t = s["table"]

        def cell(arm: str, key: str, t: Dict[str, Any] = t) -> str:
            return _diff(t[arm][key]) if arm in t and key in t[arm] else "n/a"

        info = s["information"]
        out.append(
            f"| {regime_of(r)} | {s['start']:.3f} | "
            f"{fmt(*t['grpo']['all_negative_early']) if 'grpo' in t else 'n/a'} | "
            f"{cell('sgpo_prefix', 'diff_early')} | {cell('sgpo_prefix', 'diff_last')} | "
            f"{cell('sgpo_logistic', 'diff_early')} | {cell('sgpo_logistic', 'diff_last')} | "
            f"{_diff(info['sgpo_shuffled']) if 'sgpo_shuffled' in info else 'n/a'} | "
            f"{_diff(info['sgpo_noisy']) if 'sgpo_noisy' in info else 'n/a'} |"
        )
    s = summaries[0]
    out += [
        "",
        f"Held-out greedy accuracy, paired differences over seeds (mean ± 95% t-interval); early = step "
        f"{s['early']}, last = step {s['last']}, mean = mean over all evaluations; all-negative early = "
        f"fraction of GRPO's training groups with no right completion over steps "
        f"{s['early_window'][0]}-{s['early_window'][1]}.",
        "",
    ]
    return out


def _regime(results: Dict[str, Any], s: Dict[str, Any], figures: List[str], md_path: str) -> List[str]:
    cfg = results["config"]
    t = s["table"]
    rel = [os.path.relpath(p, os.path.dirname(os.path.abspath(md_path))) for p in figures]
    steps = s["steps"]
    shown = [x for x in steps if x in (0, s["early"], steps[len(steps) // 2], s["last"])]
    k = cfg["pass_k"]
    out: List[str] = []
    w = out.append
    name = regime_of(results)
    w(f"## Regime `{name}`: {cfg['warmup_steps']} warm-up steps, start accuracy {s['start']:.3f}\n")
    for p in rel:
        w(f"![{os.path.basename(p)}]({p})\n")
    w("### Held-out greedy accuracy (mean ± 95% t-interval over seeds)\n")
    w(
        "| arm | seeds | "
        + " | ".join(f"step {x}" for x in shown)
        + f" | pass@{k}, step {s['last']} | one sample, step {s['last']} |"
    )
    w("|---|---|" + "---|" * (len(shown) + 2))
    for arm in s["arms"]:
        r = t[arm]
        cells = [fmt(*r["greedy"][str(x)]) for x in shown]
        w(
            f"| {LABELS.get(arm, arm)} | {r['seeds']} | "
            + " | ".join(cells)
            + f" | {fmt(*r['pass_at_k'])} | {fmt(*r['sample_acc'])} |"
        )
    w("")
    if any("diff_early" in r for r in t.values()):
        w("### Paired differences to GRPO (same seed; mean ± 95% t-interval)\n")
        w(
            f"| arm | greedy, step {s['early']} | greedy, step {s['last']} | greedy, mean over evals "
            f"| pass@{k}, step {s['last']} | one sample, step {s['last']} "
            f"| train-batch acc., steps {s['late_window'][0]}-{s['late_window'][1]} |"
        )
        w("|---|---|---|---|---|---|---|")
        for arm in s["arms"]:
            r = t[arm]
            if "diff_early" not in r:
                continue
            cells = [r["diff_early"], r["diff_last"], r["diff_auc"], r["diff_passk"], r["diff_sample"]]
            cells.append(r["diff_train_late"])
            w(f"| {LABELS.get(arm, arm)} | " + " | ".join(_diff(c) for c in cells) + " |")
        w("")
    w("### Steps to a threshold, all-negative groups, cost\n")
    w(
        f"Threshold: greedy accuracy >= start ({s['start']:.3f}) + {cfg['threshold_gain']} "
        f"= {s['threshold']:.3f}, checked at the evaluations (steps counted among the seeds that reached "
        f"it). All-negative: fraction of the training batch's groups with no right completion, mean over "
        f"steps {s['early_window'][0]}-{s['early_window'][1]} (early) and "
        f"{s['late_window'][0]}-{s['late_window'][1]} (late). Training-batch accuracy: the fraction of "
        f"right completions, sampled before the update (each RL-train problem is new to the policy in "
        f"these {cfg['steps']} steps).\n"
    )
    w(
        "| arm | reached | steps to threshold | train-batch acc., early | train-batch acc., late "
        "| all-negative, early | all-negative, late | diversified | mean credit | KL, late | s/step "
        "| judged/step |"
    )
    w("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for arm in s["arms"]:
        r = t[arm]
        w(
            f"| {LABELS.get(arm, arm)} | {r['reached']}/{r['seeds']} | "
            f"{fmt(*r['steps_to_threshold'], digits=0)} | {fmt(*r['train_acc_early'])} | "
            f"{fmt(*r['train_acc_late'])} | "
            f"{fmt(*r['all_negative_early'])} | {fmt(*r['all_negative_late'])} | {fmt(*r['diversified'])} | "
            f"{fmt(*r['mean_credit'])} | {fmt(*r['kl_last'])} | {fmt(*r['wall_per_step'], digits=2)} | "
            f"{fmt(*r['judged_per_step'], digits=1)} |"
        )
    w("")
    w("### By difficulty (greedy accuracy by number of steps, start -> last evaluation)\n")
    keys = list(next(iter(t.values()))["by_steps_last"].keys())
    w("| arm | " + " | ".join(f"{kk} steps" for kk in keys) + " |")
    w("|---|" + "---|" * len(keys))
    for arm in s["arms"]:
        r = t[arm]
        w(
            f"| {LABELS.get(arm, arm)} | "
            + " | ".join(f"{r['by_steps_first'][kk][0]:.3f} -> {fmt(*r['by_steps_last'][kk])}" for kk in keys)
            + " |"
        )
    w("")
    w(f"### Reading, regime `{name}`\n")
    w("Decided from the intervals above (a difference counts only when its 95% interval excludes zero):\n")
    out.extend(_claim(s))
    w("")
    return out


def markdown(
    everything: List[Dict[str, Any]], summaries: List[Dict[str, Any]], figures: List[List[str]], md_path: str
) -> str:
    names = " ".join(f"docs/experiment_arith_{regime_of(r)}.json" for r in everything)
    out: List[str] = ["# Experiments: SGPO vs GRPO on a small language model (TRL, CPU)\n"]
    out.append(
        f"Generated by `python examples/experiment_report.py {names}` from the raw results of "
        "`python examples/experiment_arith.py` (the default study runs both regimes); every number below "
        "is computed from those JSON files. "
        + (
            "**This is a smoke run (a few steps): its numbers mean nothing.**\n"
            if everything[0].get("smoke")
            else "\n"
        )
    )
    out.append("## Setup\n")
    out += _setup(everything)
    out.append("## Headline\n")
    out += _headline(everything, summaries)
    for r, s, f in zip(everything, summaries, figures):
        out += _regime(r, s, f, md_path)
    notes = os.path.join(os.path.dirname(os.path.abspath(__file__)), "experiment_notes.md")
    if os.path.exists(notes) and is_default(everything):
        out.append(
            "## Discussion\n\n(Written after reading the default study; the decided statements above are "
            "recomputed from the JSON, this text is not.)\n"
        )
        with open(notes) as f:
            out.append(f.read())
    return "\n".join(out) + "\n"


def write_report(results: Any, out: str, md_path: str) -> List[Dict[str, Any]]:
    """PNGs into ``out``, the report into ``md_path`` from one study's results or a list of them
    (one per regime); returns the summaries."""
    everything = results if isinstance(results, list) else [results]
    order = ["low", "medium"]
    everything = sorted(everything, key=lambda r: order.index(regime_of(r)) if regime_of(r) in order else 9)
    os.makedirs(out, exist_ok=True)
    figures = [plot(r, out, regime_of(r)) for r in everything]
    summaries = [summarize(r) for r in everything]
    with open(md_path, "w") as f:
        f.write(markdown(everything, summaries, figures, md_path))
    return summaries


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("json", nargs="+", help="results of experiment_arith.py (one per regime)")
    parser.add_argument("--out", help="folder for the PNGs (default: the first JSON's folder)")
    parser.add_argument("--markdown", default=os.path.join(ROOT, "EXPERIMENTS.md"))
    args = parser.parse_args(argv)
    everything = []
    for path in args.json:
        with open(path) as f:
            everything.append(json.load(f))
    write_report(everything, args.out or os.path.dirname(os.path.abspath(args.json[0])), args.markdown)
    print(f"report: {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
