"""`sgpo-rs demo`: GRPO and SGPO side by side on a multi-step toy task, using the library's kernels.

The setting follows the simplified model of the SGPO paper. A problem takes ``K`` sequential steps;
at each step a tabular softmax policy (logits per problem and step over ``--choices`` options, one of
them right) picks an option. A response is correct, reward 1, only if every step is right, else
reward 0. A step-wise judge reports the first wrong step (``-1`` if none) of ``K`` steps; with
probability ``--judge-noise`` it instead reports a uniformly random wrong verdict.

Both methods train from the same initial logits on the same random numbers (problem batches, the
uniforms that pick each action, the judge's coin flips), so the only difference is the reward rule:

- GRPO: ``sg.group_advantages`` on the outcome rewards. A group of ``G`` wrong responses has equal
  rewards, so every advantage is 0 and the group teaches nothing.
- SGPO: ``sg.sgpo_rewards`` adds ``credit_scale * first_error / K`` in all-negative groups, then
  ``sg.group_advantages``: a wrong response that went wrong later is better than one that went wrong
  early, so the group teaches which early steps were right.

Both then take ``sg.policy_loss`` (DAPO aggregation, on-policy) for ``dL/dlogp`` of every chosen
step and chain it exactly into the logits through the softmax Jacobian
``d log pi(a) / dz = onehot(a) - pi``. Expected accuracy is exact: the mean over problems of the
product over steps of P(right option).

Observed (defaults: K=4 steps x 3 choices, difficulty 0 so the start accuracy is 1.2%, G=8, 16 of 64
problems per iteration, lr 80, credit_scale 0.5, 20 seeds, 300 iterations; about 3 s of CPU):

- Default, perfect judge: GRPO's groups are 81% all-negative over the first 30 iterations (SGPO
  gives 99% of groups a learning signal, GRPO 19%). Iterations to 50% accuracy, median over seeds:
  GRPO 86, SGPO 46; to 90%: 180 vs 96 (20/20 seeds each). Mean accuracy over training 0.666 vs
  0.813, paired gain +0.147 +- 0.009: SGPO helped.
- Easy problems (``--steps 2 --difficulty -2``, 62% accuracy at the start): no group is ever
  all-negative, so SGPO changes no reward and the two runs are identical (gain +0.000); SGPO does
  not help. With ``--difficulty -1`` (11% at the start, 14% all-negative groups early) the gain is
  a barely visible +0.006 (90% accuracy after 74 iterations for SGPO, 77 for GRPO).
- A poor judge. At ``--judge-noise 0.8`` (K/(K+1) for K=4) the verdict is uniform over all K+1
  values whatever the truth: credit carries no information, yet group normalisation turns it into
  full-size random updates (all-negative groups over training rise to 42%, GRPO 20%). SGPO hurt:
  90% reached by 0/20 seeds (GRPO 20/20, median 180), mean accuracy 0.482 vs 0.666 (gain
  -0.184 +- 0.023). At 1.0 the verdict is always wrong, which anti-correlates credit with the
  truth: gain -0.308 +- 0.012. At 0.5 it is mixed: faster to 50% (72 vs 86) but slower to 90%
  (188 vs 180), final accuracy 0.956 vs 0.976, gain +0.028 +- 0.011.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, replace
from typing import List, Optional, Sequence, TextIO, Tuple

import numpy as np

from .advantages import group_advantages
from .credit import RULES, CreditOptions
from .loss import policy_loss
from .rewards import sgpo_rewards

METHODS: Tuple[str, str] = ("GRPO", "SGPO")
RIGHT = 0  # the right option's index; the wrong options are symmetric, so the label is arbitrary
THRESHOLDS: Tuple[float, float] = (0.5, 0.9)


@dataclass(frozen=True)
class DemoConfig:
    """One demo run; the defaults make GRPO's early groups almost all all-negative."""

    steps: int = 4
    choices: int = 3
    difficulty: float = 0.0
    group_size: int = 8
    problems: int = 64
    batch_problems: int = 16
    seeds: int = 20
    iterations: int = 300
    lr: float = 80.0
    credit_scale: float = 0.5
    judge_noise: float = 0.0
    rule: str = "prefix"
    beta: float = 5.0
    gamma: float = 0.5

    def validate(self) -> None:
        if self.steps < 1 or self.choices < 2 or self.group_size < 2:
            raise ValueError("need --steps >= 1, --choices >= 2 and --group-size >= 2")
        if not 1 <= self.batch_problems <= self.problems:
            raise ValueError("need 1 <= --batch-problems <= --problems")
        if self.seeds < 1 or self.iterations < 1:
            raise ValueError("need --seeds >= 1 and --iterations >= 1")
        if not 0.0 <= self.judge_noise <= 1.0:
            raise ValueError("--judge-noise is a probability in [0, 1]")
        CreditOptions.resolve(
            credit_scale=self.credit_scale, rule=self.rule, beta=self.beta, gamma=self.gamma
        )


@dataclass(frozen=True)
class DemoResult:
    """Per method (axis 0, in ``METHODS`` order) and seed (axis 1) curves over iterations.

    Attributes:
        accuracy: ``(2, seeds, iterations + 1)`` exact expected accuracy, before each update and
            after the last.
        all_negative_frac: ``(2, seeds, iterations)`` fraction of sampled groups with no correct
            response.
        signal_frac: ``(2, seeds, iterations)`` fraction of groups with some non-zero advantage.
        all_negative_abs_adv: ``(2, seeds, iterations)`` mean ``|advantage|`` over the rows of
            all-negative groups; NaN where an iteration had none.
    """

    config: DemoConfig
    accuracy: np.ndarray
    all_negative_frac: np.ndarray
    signal_frac: np.ndarray
    all_negative_abs_adv: np.ndarray

    def iterations_to(self, threshold: float) -> np.ndarray:
        """``(2, seeds)``: first iteration whose accuracy reaches ``threshold``; inf if never."""
        reached = self.accuracy >= threshold
        first = np.argmax(reached, axis=-1).astype(np.float64)
        return np.where(reached.any(axis=-1), first, np.inf)


@dataclass(frozen=True)
class IterationNoise:
    """All randomness of one iteration, drawn once per seed and shared by both methods."""

    problems: np.ndarray  # (S, B) distinct problem indices per seed
    action_u: np.ndarray  # (S, B, G, K) uniforms that pick each step's option (inverse CDF)
    judge_flip_u: np.ndarray  # (S, B, G) the judge errs where this is < judge_noise
    judge_pick_u: np.ndarray  # (S, B, G) which wrong verdict an erring judge reports


# ---------------------------------------------------------------------------------------------
# The task and the policy


def initial_logits(config: DemoConfig) -> np.ndarray:
    """``(2, S, P, K, C)``: every option at 0 except the right one at ``-difficulty``."""
    c = config
    logits = np.zeros((len(METHODS), c.seeds, c.problems, c.steps, c.choices))
    logits[..., RIGHT] = -c.difficulty
    return logits


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Computed in log space so a near-deterministic policy keeps finite log-probs."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    return np.exp(log_softmax(logits))


def expected_accuracy(probs: np.ndarray) -> np.ndarray:
    """``(..., P, K, C) -> (...)``: a response is right iff every step is, steps independent."""
    return probs[..., RIGHT].prod(axis=-1).mean(axis=-1)


def draw_noise(rngs: Sequence[np.random.Generator], config: DemoConfig) -> IterationNoise:
    """Draw in a fixed order whatever the settings, so runs that differ in one flag stay paired."""
    c = config
    draws = [
        (
            rng.permutation(c.problems)[: c.batch_problems],
            rng.random((c.batch_problems, c.group_size, c.steps)),
            rng.random((c.batch_problems, c.group_size)),
            rng.random((c.batch_problems, c.group_size)),
        )
        for rng in rngs
    ]
    return IterationNoise(*(np.stack(parts) for parts in zip(*draws)))


def sample_actions(probs: np.ndarray, action_u: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling: ``(M, S, B, K, C)`` probs and ``(S, B, G, K)`` uniforms give
    ``(M, S, B, G, K)`` actions. Shared uniforms keep the two methods' samples coupled."""
    cdf = np.cumsum(probs, axis=-1)[:, :, :, None]  # (M, S, B, 1, K, C)
    actions = (action_u[None, ..., None] >= cdf).sum(axis=-1)
    return np.minimum(actions, probs.shape[-1] - 1)  # guards a cdf that rounds to just below 1


def true_first_error(right_steps: np.ndarray) -> np.ndarray:
    """``(..., K)`` bool -> ``(...)`` index of the first wrong step, -1 when all are right."""
    return np.where(right_steps.all(axis=-1), -1, np.argmin(right_steps, axis=-1))


def noisy_verdicts(first_error: np.ndarray, noise: IterationNoise, config: DemoConfig) -> np.ndarray:
    """With probability ``judge_noise`` replace the verdict by one of the ``K`` other values in
    ``{-1, ..., K-1}``, uniformly: the judge errs, and says so confidently."""
    pick = np.floor(noise.judge_pick_u * config.steps).astype(np.int64) - 1  # in {-1, ..., K-2}
    wrong = np.where(pick >= first_error, pick + 1, pick)  # skip the true verdict
    errs = noise.judge_flip_u < config.judge_noise
    return np.where(errs, wrong, first_error)


# ---------------------------------------------------------------------------------------------
# One training step


def method_advantages(
    method: str, rewards: np.ndarray, verdicts: np.ndarray, config: DemoConfig
) -> np.ndarray:
    """``(N,)`` advantages of one method; rows are groups of ``G`` consecutive responses."""
    g = config.group_size
    if method == "GRPO":
        return group_advantages(rewards, group_size=g)
    num_steps = np.full(rewards.shape, config.steps, dtype=np.int64)
    out = sgpo_rewards(
        rewards,
        verdicts,
        num_steps,
        group_size=g,
        credit_scale=config.credit_scale,
        rule=config.rule,
        beta=config.beta,
        gamma=config.gamma,
    )
    return group_advantages(out.rewards, group_size=g)


def logp_gradient(logp: np.ndarray, advantages: np.ndarray, config: DemoConfig) -> np.ndarray:
    """``dL/dlogp`` of every chosen step from the library's fused loss.

    On-policy (``old_logp = logp``). All seeds go in one call; ``num_items`` is one seed's token
    count, so the DAPO loss is the sum of per-seed losses and each seed gets its own gradient.
    """
    mask = np.ones(logp.shape, dtype=bool)
    num_items = config.batch_problems * config.group_size * config.steps
    out = policy_loss(logp, logp, advantages, mask, loss_type="dapo", num_items=num_items)
    return out.grad.astype(np.float64)


def logit_gradient(grad_logp: np.ndarray, actions: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Chain ``(M, S, B, G, K)`` ``dL/dlogp`` through ``d log pi(a)/dz = onehot(a) - pi``, summed
    over the group: ``(M, S, B, K, C)``, one slice per sampled problem."""
    onehot = actions[..., None] == np.arange(probs.shape[-1])
    weighted = (grad_logp[..., None] * onehot).sum(axis=3)
    return weighted - grad_logp.sum(axis=3)[..., None] * probs


def group_mean(values: np.ndarray, where: np.ndarray) -> np.ndarray:
    """``(..., S, B, G)`` values averaged over the rows of groups where ``(S, B)`` holds."""
    rows = np.broadcast_to(where[..., None], values.shape)
    count = rows.sum(axis=(-2, -1))
    total = np.where(rows, values, 0.0).sum(axis=(-2, -1))
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


@dataclass(frozen=True)
class StepRecord:
    """What one iteration logs, per method and seed."""

    all_negative_frac: np.ndarray  # (M, S)
    signal_frac: np.ndarray  # (M, S)
    all_negative_abs_adv: np.ndarray  # (M, S)


def train_step(logits: np.ndarray, noise: IterationNoise, config: DemoConfig) -> StepRecord:
    """Sample, judge, score and update both methods' logits in place."""
    c = config
    seed_index = np.arange(c.seeds)[:, None]
    log_probs = log_softmax(logits[:, seed_index, noise.problems])  # (M, S, B, K, C)
    probs = np.exp(log_probs)
    actions = sample_actions(probs, noise.action_u)  # (M, S, B, G, K)
    right_steps = actions == RIGHT
    rewards = right_steps.all(axis=-1).astype(np.float64)  # (M, S, B, G)
    verdicts = noisy_verdicts(true_first_error(right_steps), noise, c)
    logp = np.take_along_axis(log_probs[:, :, :, None], actions[..., None], axis=-1)[..., 0]

    advantages = np.empty_like(rewards)
    grad_logp = np.empty_like(logp)
    for m, method in enumerate(METHODS):
        adv = method_advantages(method, rewards[m].ravel(), verdicts[m].ravel(), c)
        advantages[m] = adv.reshape(rewards.shape[1:])
        grad_logp[m] = logp_gradient(logp[m].reshape(-1, c.steps), adv, c).reshape(logp.shape[1:])

    # Problems within a seed's batch are distinct, so this fancy-indexed update never collides.
    logits[:, seed_index, noise.problems] -= c.lr * logit_gradient(grad_logp, actions, probs)

    all_negative = rewards.max(axis=-1) == 0  # (M, S, B)
    signal = (advantages != 0).any(axis=-1)
    return StepRecord(
        all_negative.mean(axis=-1), signal.mean(axis=-1), group_mean(np.abs(advantages), all_negative)
    )


def train(config: DemoConfig, progress: Optional[TextIO] = None) -> DemoResult:
    """Train GRPO and SGPO for every seed at once (seeds are a batch axis; methods another)."""
    config.validate()
    c = config
    rngs = [np.random.default_rng(seed) for seed in range(c.seeds)]
    logits = initial_logits(c)
    shape = (len(METHODS), c.seeds, c.iterations)
    accuracy = np.empty((len(METHODS), c.seeds, c.iterations + 1))
    records = {name: np.empty(shape) for name in ("neg", "signal", "abs_adv")}
    bar = ProgressBar(c.iterations, progress)
    for it in range(c.iterations):
        accuracy[..., it] = expected_accuracy(softmax(logits))
        step = train_step(logits, draw_noise(rngs, c), c)
        records["neg"][..., it] = step.all_negative_frac
        records["signal"][..., it] = step.signal_frac
        records["abs_adv"][..., it] = step.all_negative_abs_adv
        bar.update(it + 1)
    accuracy[..., -1] = expected_accuracy(softmax(logits))
    bar.close()
    return DemoResult(c, accuracy, records["neg"], records["signal"], records["abs_adv"])


class ProgressBar:
    """A one-line bar on a stream (stderr); redrawn only when the shown percentage changes."""

    def __init__(self, total: int, stream: Optional[TextIO], width: int = 30) -> None:
        self.total, self.stream, self.width, self.shown = total, stream, width, -1

    def update(self, done: int) -> None:
        percent = 100 * done // self.total
        if self.stream is None or percent == self.shown:
            return
        self.shown = percent
        filled = self.width * done // self.total
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\rtraining [{bar}] {percent:3d}% ({done}/{self.total} iterations)")
        self.stream.flush()

    def close(self) -> None:
        if self.stream is not None:
            self.stream.write("\n")
            self.stream.flush()


# ---------------------------------------------------------------------------------------------
# Statistics and the report


_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def t_quantile_975(df: int) -> float:
    """Student t 97.5% quantile: a table for small df, Cornish-Fisher beyond (error < 0.005)."""
    if df <= len(_T975):
        return _T975[max(df, 1) - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_and_ci(samples: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mean over axis 0 and the half-width of its 95% t confidence interval (0 for one sample)."""
    n = samples.shape[0]
    mean = samples.mean(axis=0)
    if n < 2:
        return mean, np.zeros_like(mean)
    return mean, t_quantile_975(n - 1) * samples.std(axis=0, ddof=1) / math.sqrt(n)


def median_iterations(iterations: np.ndarray, total: int) -> str:
    """Median over seeds counting never-reached as infinite, so it is honest about failures."""
    median = float(np.median(iterations))
    reached = int(np.isfinite(iterations).sum())
    shown = f">{total}" if not math.isfinite(median) else f"{median:.0f}"
    return f"{shown} ({reached}/{iterations.size})"


def early_window(result: DemoResult) -> int:
    return max(1, result.config.iterations // 10)


def table(result: DemoResult) -> str:
    """The plain-text comparison, one row per measure, one column per method."""
    c = result.config
    early = early_window(result)
    rows: List[Tuple[str, Sequence[str]]] = [
        (f"all-negative groups, first {early} iters", _per_method(result.all_negative_frac[..., :early])),
        ("all-negative groups, all iters", _per_method(result.all_negative_frac)),
        (f"groups with a learning signal, first {early} iters", _per_method(result.signal_frac[..., :early])),
        ("accuracy at start", _per_method(result.accuracy[..., :1], digits=4)),
        ("accuracy at end (mean +- 95% CI)", _per_method(result.accuracy[..., -1:])),
        ("mean accuracy over training", _per_method(result.accuracy)),
    ]
    for threshold in THRESHOLDS:
        its = result.iterations_to(threshold)
        label = f"iterations to {threshold:.0%} (median, seeds)"
        rows.append((label, [median_iterations(its[m], c.iterations) for m in range(len(METHODS))]))
    gain, half = paired_gain(result)
    rows.append(("SGPO gain in mean accuracy (paired)", ["", f"{gain:+.3f} +- {half:.3f}"]))
    width = max(len(label) for label, _ in rows)
    lines = [f"{'':{width}}  {METHODS[0]:>20}  {METHODS[1]:>20}"]
    lines += [f"{label:{width}}  {cells[0]:>20}  {cells[1]:>20}" for label, cells in rows]
    return "\n".join(lines)


def _per_method(values: np.ndarray, digits: int = 3) -> List[str]:
    """Average each seed's values over iterations, then the mean and CI over seeds."""
    cells = []
    for m in range(len(METHODS)):
        mean, half = mean_and_ci(values[m].mean(axis=-1))
        cells.append(f"{mean:.{digits}f} +- {half:.{digits}f}")
    return cells


def paired_gain(result: DemoResult) -> Tuple[float, float]:
    """SGPO minus GRPO mean accuracy over training, paired by seed (same random numbers), with
    the half-width of its 95% CI."""
    gain = result.accuracy[1].mean(axis=-1) - result.accuracy[0].mean(axis=-1)
    mean, half = mean_and_ci(gain)
    return float(mean), float(half)


def verdict(result: DemoResult) -> str:
    """Did SGPO help? Only if the whole confidence interval of the paired gain is above 0."""
    mean, half = paired_gain(result)
    span = f"SGPO - GRPO mean accuracy over training = {mean:+.3f} +- {half:.3f} (95% CI, paired seeds)"
    if mean - half > 0:
        return f"SGPO helped in this setting: {span}."
    if mean + half < 0:
        return f"SGPO hurt in this setting: {span}."
    return f"SGPO made no clear difference in this setting: {span}."


def settings_line(config: DemoConfig) -> str:
    c = config
    return (
        f"{c.seeds} seeds, {c.iterations} iterations, K={c.steps} steps x {c.choices} choices, "
        f"difficulty {c.difficulty:g}, G={c.group_size}, {c.batch_problems}/{c.problems} problems per "
        f"batch, lr {c.lr:g}, credit_scale {c.credit_scale:g}, judge noise {c.judge_noise:g}, "
        + (
            f"logistic credit rule (beta {c.beta:g}, gamma {c.gamma:g})"
            if c.rule == "logistic"
            else "prefix credit rule"
        )
    )


# ---------------------------------------------------------------------------------------------
# The plot


def plot(result: DemoResult, path: str) -> bool:
    """Write the PNG; False (with a hint on stderr) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed; must precede pyplot
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "matplotlib is not installed, so no plot was written; to get it: pip install 'sgpo-rs[demo]'",
            file=sys.stderr,
        )
        return False
    colors = {"GRPO": "tab:blue", "SGPO": "tab:orange"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = [
        (axes[0], result.accuracy, "expected accuracy (95% CI over seeds)"),
        (axes[1], result.all_negative_frac, "fraction of all-negative groups"),
        (axes[2], result.signal_frac, "groups with a learning signal (some advantage != 0)"),
    ]
    for ax, curves, title in panels:
        for m, method in enumerate(METHODS):
            mean, half = mean_and_ci(curves[m])
            x = np.arange(mean.size)
            ax.plot(x, mean, color=colors[method], label=method)
            ax.fill_between(x, mean - half, mean + half, color=colors[method], alpha=0.25, lw=0)
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right")
    fig.suptitle(settings_line(result.config), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ---------------------------------------------------------------------------------------------
# The command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``demo`` flags (defaults shown in ``--help``) and ``run`` as its handler."""
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    d = DemoConfig()
    add = parser.add_argument
    add("--steps", type=int, default=d.steps, help="steps K per problem")
    add("--choices", type=int, default=d.choices, help="options per step, one of them right")
    add("--difficulty", type=float, default=d.difficulty, help="right option's initial logit is -this")
    add("--group-size", type=int, default=d.group_size, help="responses G per problem")
    add("--problems", type=int, default=d.problems, help="problems in the task")
    add("--batch-problems", type=int, default=d.batch_problems, help="problems sampled per iteration")
    add("--seeds", type=int, default=d.seeds, help="independent seeds")
    add("--iterations", type=int, default=d.iterations, help="training iterations")
    add("--lr", type=float, default=d.lr, help="step size on the logits (for the batch-mean DAPO loss)")
    add("--credit-scale", type=float, default=d.credit_scale, help="SGPO credit_scale")
    add(
        "--rule",
        choices=RULES,
        default=d.rule,
        help="SGPO credit rule: prefix f(c) = c, logistic sigma(beta (c - gamma))",
    )
    add("--beta", type=float, default=d.beta, help="steepness of the logistic rule")
    add("--gamma", type=float, default=d.gamma, help="threshold of the logistic rule")
    add(
        "--compare-rules",
        action="store_true",
        help="also train SGPO under both credit rules (prefix; logistic with credit_scale 1) and compare",
    )
    add(
        "--judge-noise",
        type=float,
        default=d.judge_noise,
        help="probability the judge reports a uniformly random wrong verdict",
    )
    add("--out", default="sgpo_demo.png", help="PNG path")
    add("--no-plot", action="store_true", help="skip the PNG")
    add("--quiet", action="store_true", help="no progress bar; print only the table and summary")
    parser.set_defaults(run=run)


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    return DemoConfig(
        steps=args.steps,
        choices=args.choices,
        difficulty=args.difficulty,
        group_size=args.group_size,
        problems=args.problems,
        batch_problems=args.batch_problems,
        seeds=args.seeds,
        iterations=args.iterations,
        lr=args.lr,
        credit_scale=args.credit_scale,
        judge_noise=args.judge_noise,
        rule=args.rule,
        beta=args.beta,
        gamma=args.gamma,
    )


def run_demo(config: DemoConfig, *, out: Optional[str] = "sgpo_demo.png", quiet: bool = False) -> DemoResult:
    """Train, print the table, write the plot (unless ``out`` is None), print the verdict."""
    if not quiet:
        print(f"GRPO vs SGPO: {settings_line(config)}")
    result = train(config, progress=None if quiet else sys.stderr)
    print(table(result))
    if out is not None and plot(result, out) and not quiet:
        print(f"plot written to {out}")
    print(verdict(result))
    return result


def compare_rules(
    config: DemoConfig, quiet: bool = False, trained: Optional[DemoResult] = None
) -> Tuple[float, float]:
    """SGPO under the logistic rule (``config``'s beta and gamma, credit_scale 1: the paper's
    setting) against SGPO under the prefix rule (``config``'s credit_scale), on the same seeds and
    random numbers. ``trained``: a run already done, reused where it is one of the two. Prints one
    line; returns the paired difference in mean accuracy over training (logistic - prefix) and its
    95% CI half-width."""
    prefix = replace(config, rule="prefix")
    logistic = replace(config, rule="logistic", credit_scale=1.0)
    results = [
        trained
        if trained is not None and trained.config == arm
        else train(arm, progress=None if quiet else sys.stderr)
        for arm in (prefix, logistic)
    ]
    curves = [r.accuracy[METHODS.index("SGPO")].mean(axis=-1) for r in results]
    means = [mean_and_ci(c) for c in curves]
    diff, half = mean_and_ci(curves[1] - curves[0])
    if diff - half > 0:
        word = "did better than the prefix rule"
    elif diff + half < 0:
        word = "did worse than the prefix rule"
    else:
        word = "made no clear difference"
    print(
        f"credit rules: SGPO mean accuracy over training, prefix (credit_scale {prefix.credit_scale:g}) "
        f"{means[0][0]:.3f} +- {means[0][1]:.3f}, logistic (beta {config.beta:g}, gamma {config.gamma:g}, "
        f"credit_scale 1) {means[1][0]:.3f} +- {means[1][1]:.3f}; logistic - prefix = {diff:+.3f} +- "
        f"{half:.3f} (95% CI, paired seeds): the logistic rule {word} in this setting."
    )
    return float(diff), float(half)


def run(args: argparse.Namespace) -> int:
    """The ``sgpo-rs demo`` command; returns the exit status."""
    try:
        config = config_from_args(args)
        config.validate()
    except ValueError as error:
        print(f"sgpo-rs demo: {error}", file=sys.stderr)
        return 2
    result = run_demo(config, out=None if args.no_plot else args.out, quiet=args.quiet)
    if args.compare_rules:
        compare_rules(config, quiet=args.quiet, trained=result)
    return 0
