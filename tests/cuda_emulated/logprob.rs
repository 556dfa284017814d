//! The selective log-softmax (`cuda::logprob::selective_logprobs` and
//! `selective_logprobs_backward`) against `sgpo_rs::logprob` on its float64 path
//! (`float32_exp: false`), which is exact to far below the tolerances.
//!
//! Tolerances, from the kernels' float32 steps (`z = x * (1/T)` with `1/T` rounded to float32;
//! the exponentials `expf(z - m)`, each 16-byte pack of them summed in float32 before the float64
//! sum; `z_y - m` and, in the backward, `log p_j = (z_j - m) - ln s` in float32):
//! - `logp`: `1e-6 + 2.5e-7 (|logp| + ln V + [T != 1] max|z|)`. The pack sums carry at most ~11
//!   float32 roundings relative to `s` (7e-7 in `ln s`); the float32 differences and the result's
//!   rounding cost 2^-24 of `|z_y - m| <= |logp| + ln V` each; at T != 1 each product `x * (1/T)`
//!   is off by up to 2^-23 |z|, which moves `logp` by up to 2^-22 max|z|. (At T = 1 the products
//!   are exact: large logits keep their precision.)
//! - entropy: the same with `H` in place of `|logp|`.
//! - float32 `dlogits`, per element: `2 p_j (|g| + |gH| (1 + |log p_j| + H)) / T * (1e-6 +
//!   2.5e-7 (ln V + [T != 1] max|z|)) + 2^-22 |dlogits_j|`, with `p_j` from the test's own
//!   float64 softmax. Each element is `p_j` (at the target `1 - p_y = -expm1(log p_y)`, whose
//!   error is also `p_y` times that of `log p_y`) times the upstream gradients, and `p_j`
//!   carries the error of `log p_j`: the bound above, doubled for the float32 `exp` and
//!   products; the last term is the float32 rounding of the result and of `1/T` (a banned
//!   target's `g / T`).
//! - bfloat16/float16 `dlogits`: one unit in the last place of the format apart from the CPU's
//!   value rounded to it (the float32 difference is far below half a unit, but may straddle a
//!   rounding boundary), or within the float32 bound.

use half::{bf16, f16};

use sgpo_rs::cuda::logprob::{
    selective_logprobs, selective_logprobs_backward, BackwardTensors, ForwardTensors, STATS_PER_ROW,
};
use sgpo_rs::cuda::{status, DeviceTensor};
use sgpo_rs::logprob::{ForwardOut, LogprobOptions, Upstream};

use super::support::{
    assert_both_raise, assert_near, input, output, rounded, strided, Align, Dtype, Float, Placed,
    Status,
};
use crate::common::Rng;

/// How the logits lie in memory. The rows a view skips hold NaN: a kernel that reads them sets
/// the status, and an in-place backward must leave them as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// `(N, V)`, contiguous.
    Dense(Align),
    /// TRL's `logits[:, :-1]` of a `(B, T + 1, V)` tensor: `(B, T, V)` with strides
    /// `((T + 1) V, V, 1)`, read in place.
    TrlView { batch: usize },
    /// `logits[:, 1:]` of an `(N, V + 1)` tensor: rows `V + 1` apart, each starting one element
    /// past the row's boundary (the scalar path whatever V is).
    ColumnSlice,
}

/// The logits as the kernels see them (a description of `storage`) and the CPU's dense copy.
struct Logits<T> {
    storage: Placed<T>,
    /// Element offset of the tensor's first element within `storage`, its shape and strides.
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<i64>,
    /// Where each logical row starts within `storage`.
    row_starts: Vec<usize>,
    dense: Vec<T>,
    vocab: usize,
}

impl<T: Float> Logits<T> {
    fn new(values: &[f32], rows: usize, vocab: usize, layout: Layout) -> Self {
        let dense = rounded::<T>(values);
        // Elements of the underlying tensor, the view's first element, shape and strides.
        let (total, offset, shape, strides) = match layout {
            Layout::Dense(_) => (rows * vocab, 0, vec![rows, vocab], vec![vocab, 1]),
            Layout::TrlView { batch } => {
                let steps = rows / batch;
                assert_eq!(steps * batch, rows, "whole batches");
                let shape = vec![batch, steps, vocab];
                (
                    batch * (steps + 1) * vocab,
                    0,
                    shape,
                    vec![(steps + 1) * vocab, vocab, 1],
                )
            }
            Layout::ColumnSlice => (rows * (vocab + 1), 1, vec![rows, vocab], vec![vocab + 1, 1]),
        };
        let row_starts: Vec<usize> = (0..rows)
            .map(|r| match shape.len() {
                2 => offset + r * strides[0],
                _ => offset + (r / shape[1]) * strides[0] + (r % shape[1]) * strides[1],
            })
            .collect();
        let strides = strides.iter().map(|&s| s as i64).collect();
        let mut full = vec![T::from_f32(f32::NAN); total];
        for (r, &start) in row_starts.iter().enumerate() {
            full[start..start + vocab].copy_from_slice(&dense[r * vocab..(r + 1) * vocab]);
        }
        let align = match layout {
            Layout::Dense(align) => align,
            _ => Align::On16,
        };
        Logits {
            storage: Placed::new(&full, align),
            offset,
            shape,
            strides,
            row_starts,
            dense,
            vocab,
        }
    }

    fn describe(&self) -> DeviceTensor {
        let ptr = self.storage.get()[self.offset..].as_ptr() as u64;
        strided(ptr, T::DTYPE, &self.shape, &self.strides)
    }

    /// The same description from a unique borrow, for the in-place backward.
    fn describe_mut(&mut self) -> DeviceTensor {
        let ptr = self.storage.get_mut()[self.offset..].as_mut_ptr() as u64;
        strided(ptr, T::DTYPE, &self.shape, &self.strides)
    }

    /// Row `r` as the storage holds it now.
    fn row(&self, r: usize) -> &[T] {
        &self.storage.get()[self.row_starts[r]..self.row_starts[r] + self.vocab]
    }

    /// Whether `k` of the storage is part of no row (padding the kernels must not touch).
    fn is_padding(&self, k: usize) -> bool {
        !self
            .row_starts
            .iter()
            .any(|&s| (s..s + self.vocab).contains(&k))
    }
}

/// One forward-and-backward case.
#[derive(Debug, Clone, Copy)]
struct Case {
    dtype: Dtype,
    rows: usize,
    vocab: usize,
    layout: Layout,
    temperature: f64,
    entropy: bool,
    /// Ban (set to -inf) a few logits per row, a target among them in row 0.
    banned: bool,
    /// Logits offset by this much (large logits: `logp` is a small difference of large values).
    offset: f32,
    backward: Backward,
}

/// Which backward a case runs after the forward (each on NaN-poisoned outputs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backward {
    /// Into a dense buffer at the given alignment, recomputing the row statistics.
    Recompute(Align),
    /// Into a dense buffer, with the forward's saved statistics; also checks that the result is
    /// bit for bit the recomputing backward's.
    Saved(Align),
    /// Into the logits themselves (dlogits == logits), after a recomputing backward into a
    /// dense buffer, which it must equal bit for bit.
    InPlace,
    /// Into a buffer of its own laid out like the logits view (same shape and strides: the
    /// matching view of a full-size gradient, as `completion_logprobs` passes), with the saved
    /// statistics; the positions the view skips must stay unwritten.
    LikeLogits,
    /// Into a buffer of the logits' shape in a layout of its own: sequence-first, `(T, B, V)`
    /// memory viewed as `(B, T, V)` (rows of the sequences alternating), or dense `(N, V)` for
    /// 2-D logits; with the saved statistics.
    OwnLayout,
}

/// The values of one case: logits, targets and upstream gradients.
struct Values {
    logits: Vec<f32>,
    targets: Vec<i64>,
    grad_logp: Vec<f32>,
    grad_entropy: Vec<f32>,
}

impl Case {
    fn values(&self, rng: &mut Rng) -> Values {
        let (n, v) = (self.rows, self.vocab);
        let mut logits: Vec<f32> = (0..n * v)
            .map(|_| self.offset + rng.uniform(-8.0, 8.0) as f32)
            .collect();
        let mut targets: Vec<i64> = (0..n).map(|_| rng.below(v) as i64).collect();
        targets[0] = v as i64 - 1;
        if n > 1 {
            targets[1] = 0;
        }
        if self.banned && v > 1 {
            for r in 0..n {
                for _ in 0..1 + v / 50 {
                    let j = rng.below(v);
                    // Never the whole row: one logit stays finite.
                    if j != (targets[r] as usize + 1) % v {
                        logits[r * v + j] = f32::NEG_INFINITY;
                    }
                }
            }
            logits[targets[0] as usize] = f32::NEG_INFINITY;
        }
        Values {
            logits,
            targets,
            grad_logp: (0..n).map(|_| rng.uniform(-2.0, 2.0) as f32).collect(),
            grad_entropy: (0..n).map(|_| rng.uniform(-2.0, 2.0) as f32).collect(),
        }
    }

    fn name(&self) -> String {
        format!(
            "{:?} {}x{} {:?} T {} entropy {} banned {} offset {} {:?}",
            self.dtype,
            self.rows,
            self.vocab,
            self.layout,
            self.temperature,
            self.entropy,
            self.banned,
            self.offset,
            self.backward
        )
    }

    fn check(&self, rng: &mut Rng) {
        let values = self.values(rng);
        match self.dtype {
            Dtype::F32 => check_case::<f32>(self, &values),
            Dtype::Bf16 => check_case::<bf16>(self, &values),
            Dtype::F16 => check_case::<f16>(self, &values),
        }
    }
}

/// The tolerance terms of a row that do not depend on the output (see the module doc):
/// `ln V + [T != 1] max|z|`.
fn row_scale(row: &[f32], case: &Case) -> f64 {
    let ln_v = (case.vocab as f64).ln();
    if case.temperature == 1.0 {
        return ln_v;
    }
    let max_z = row
        .iter()
        .filter(|x| x.is_finite())
        .fold(0f64, |m, &x| m.max((x as f64 / case.temperature).abs()));
    ln_v + max_z
}

/// `log softmax(row / T)` in float64: the probabilities the backward's tolerance scales with.
fn log_softmax(row: &[f32], temperature: f64) -> Vec<f64> {
    let z: Vec<f64> = row.iter().map(|&x| x as f64 / temperature).collect();
    let m = z.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x));
    let lse = m + z.iter().map(|&x| (x - m).exp()).sum::<f64>().ln();
    z.iter().map(|&x| x - lse).collect()
}

fn options(case: &Case) -> LogprobOptions {
    LogprobOptions {
        temperature: case.temperature,
        float32_exp: false,
    }
}

/// What the GPU forward gave.
struct Forward {
    logp: Vec<f32>,
    entropy: Vec<f32>,
    stats: Vec<f32>,
    status: Status,
}

fn gpu_forward<T: Float>(
    logits: &Logits<T>,
    case: &Case,
    targets: &[i64],
    keep_stats: bool,
) -> Forward {
    let n = case.rows;
    let mut logp = vec![f32::NAN; n];
    let mut entropy = vec![f32::NAN; n];
    let mut stats = vec![f32::NAN; n * STATS_PER_ROW];
    let mut status = Status::new();
    let d_entropy = output(&mut entropy, "float32", &[n]);
    let d_stats = output(&mut stats, "float32", &[n, STATS_PER_ROW]);
    selective_logprobs(
        0,
        &ForwardTensors {
            logits: &logits.describe(),
            targets: &input(targets, "int64", &[n]),
            logp: &output(&mut logp, "float32", &[n]),
            entropy: case.entropy.then_some(&d_entropy),
            stats: keep_stats.then_some(&d_stats),
            status: &status.tensor(),
        },
        case.temperature,
    )
    .expect("forward launches");
    Forward {
        logp,
        entropy,
        stats,
        status,
    }
}

/// The GPU backward into `dlogits` (a dense `(N, V)` description, or the logits' own for the
/// in-place backward); returns the status.
fn gpu_backward(
    logits: &DeviceTensor,
    case: &Case,
    values: &Values,
    stats: Option<&[f32]>,
    dlogits: &DeviceTensor,
) -> Status {
    let n = case.rows;
    let mut status = Status::new();
    let d_gh = input(&values.grad_entropy, "float32", &[n]);
    let d_stats = stats.map(|s| input(s, "float32", &[n, STATS_PER_ROW]));
    selective_logprobs_backward(
        0,
        &BackwardTensors {
            logits,
            targets: &input(&values.targets, "int64", &[n]),
            grad_logp: &input(&values.grad_logp, "float32", &[n]),
            grad_entropy: case.entropy.then_some(&d_gh),
            stats: d_stats.as_ref(),
            dlogits,
            status: &status.tensor(),
        },
        case.temperature,
    )
    .expect("backward launches");
    status
}

/// Forward and backward of one case on both sides, every output compared.
fn check_case<T: Float>(case: &Case, values: &Values) {
    let what = case.name();
    let (n, v) = (case.rows, case.vocab);
    let mut logits = Logits::<T>::new(&values.logits, n, v, case.layout);
    let upcast: Vec<f32> = logits.dense.iter().map(|x| x.to_f32()).collect();

    // Forward.
    let mut cpu_logp = vec![0f32; n];
    let mut cpu_entropy = vec![0f32; n];
    sgpo_rs::logprob::selective_logprobs(
        &logits.dense,
        v,
        &values.targets,
        &options(case),
        ForwardOut {
            logp: &mut cpu_logp,
            entropy: case.entropy.then_some(&mut cpu_entropy[..]),
            stats: None,
        },
    )
    .unwrap_or_else(|e| panic!("{what}: the CPU engine refused clean inputs: {e}"));
    let keep_stats = matches!(
        case.backward,
        Backward::Saved(_) | Backward::LikeLogits | Backward::OwnLayout
    );
    let forward = gpu_forward(&logits, case, &values.targets, keep_stats);
    forward.status.assert_clean(&format!("forward {what}"));
    for r in 0..n {
        let scale = row_scale(&upcast[r * v..(r + 1) * v], case);
        let want = cpu_logp[r] as f64;
        let tol = 1e-6 + 2.5e-7 * (want.abs() + scale);
        assert_near(
            &format!("{what}: logp[{r}]"),
            forward.logp[r] as f64,
            want,
            tol,
        );
        if case.entropy {
            let want = cpu_entropy[r] as f64;
            let tol = 1e-6 + 2.5e-7 * (want.abs() + scale);
            assert_near(
                &format!("{what}: entropy[{r}]"),
                forward.entropy[r] as f64,
                want,
                tol,
            );
        }
    }

    // Backward: the CPU's float64 gradient, then the case's GPU backward.
    let mut cpu_dlogits = vec![0f64; n * v];
    sgpo_rs::logprob::selective_logprobs_backward(
        &logits.dense,
        v,
        &values.targets,
        &options(case),
        &Upstream {
            grad_logp: &values.grad_logp,
            grad_entropy: case.entropy.then_some(&values.grad_entropy[..]),
            stats: None,
        },
        &mut cpu_dlogits,
    )
    .unwrap_or_else(|e| panic!("{what}: the CPU backward refused clean inputs: {e}"));
    let out_align = match case.backward {
        Backward::Recompute(a) | Backward::Saved(a) => a,
        Backward::InPlace | Backward::LikeLogits | Backward::OwnLayout => Align::On16,
    };
    let mut dense_out = Placed::new(&vec![T::from_f32(f32::NAN); n * v], out_align);
    let d_out = dense_out.output(T::DTYPE, &[n, v]);
    let recomputed = gpu_backward(&logits.describe(), case, values, None, &d_out);
    recomputed.assert_clean(&format!("backward {what}"));
    let recomputed: Vec<T> = dense_out.get().to_vec();
    let got: Vec<T> = match case.backward {
        Backward::Recompute(_) => recomputed.clone(),
        Backward::Saved(_) => {
            let mut saved_out = Placed::new(&vec![T::from_f32(f32::NAN); n * v], out_align);
            let d_saved = saved_out.output(T::DTYPE, &[n, v]);
            let status = gpu_backward(
                &logits.describe(),
                case,
                values,
                Some(&forward.stats),
                &d_saved,
            );
            status.assert_clean(&format!("backward with saved stats {what}"));
            saved_out.get().to_vec()
        }
        Backward::InPlace => {
            let before: Vec<T> = logits.storage.get().to_vec();
            let d_logits = logits.describe_mut();
            let status = gpu_backward(&d_logits.clone(), case, values, None, &d_logits);
            status.assert_clean(&format!("in-place backward {what}"));
            for (k, (a, b)) in logits.storage.get().iter().zip(&before).enumerate() {
                if logits.is_padding(k) {
                    assert_eq!(
                        a.to_f32().to_bits(),
                        b.to_f32().to_bits(),
                        "{what}: padding {k} written"
                    );
                }
            }
            (0..n).flat_map(|r| logits.row(r).to_vec()).collect()
        }
        Backward::LikeLogits => {
            let len = logits.storage.get().len();
            let mut other = Placed::new(&vec![T::from_f32(f32::NAN); len], Align::On16);
            let ptr = other.get_mut()[logits.offset..].as_mut_ptr() as u64;
            let d_other = strided(ptr, T::DTYPE, &logits.shape, &logits.strides);
            let status = gpu_backward(
                &logits.describe(),
                case,
                values,
                Some(&forward.stats),
                &d_other,
            );
            status.assert_clean(&format!("backward into a buffer like the logits {what}"));
            for (k, a) in other.get().iter().enumerate() {
                if logits.is_padding(k) {
                    assert!(a.to_f32().is_nan(), "{what}: skipped position {k} written");
                }
            }
            (0..n)
                .flat_map(|r| {
                    let start = logits.row_starts[r];
                    other.get()[start..start + v].to_vec()
                })
                .collect()
        }
        Backward::OwnLayout => {
            let mut other = Placed::new(&vec![T::from_f32(f32::NAN); n * v], Align::On16);
            let ptr = other.get_mut().as_mut_ptr() as u64;
            // Row (b, t) of a (B, T, V) view at t * B * V + b * V; a 2-D one dense.
            let (shape, strides, steps) = match logits.shape[..] {
                [b, t, _] => (vec![b, t, v], vec![v as i64, (b * v) as i64, 1], t),
                _ => (vec![n, v], vec![v as i64, 1], n),
            };
            let place = |r: usize| {
                (r / steps) * strides[0] as usize
                    + (r % steps) * strides[strides.len() - 2] as usize
            };
            let d_other = strided(ptr, T::DTYPE, &shape, &strides);
            let status = gpu_backward(
                &logits.describe(),
                case,
                values,
                Some(&forward.stats),
                &d_other,
            );
            status.assert_clean(&format!("backward into a layout of its own {what}"));
            (0..n)
                .flat_map(|r| other.get()[place(r)..place(r) + v].to_vec())
                .collect()
        }
    };
    if case.backward != Backward::Recompute(out_align) {
        for (k, (a, b)) in got.iter().zip(&recomputed).enumerate() {
            assert_eq!(
                a.to_f32().to_bits(),
                b.to_f32().to_bits(),
                "{what}: dlogits[{k}] differs from the recomputing backward's"
            );
        }
    }
    for r in 0..n {
        let row = &upcast[r * v..(r + 1) * v];
        let eps = 1e-6 + 2.5e-7 * row_scale(row, case);
        let (g, gh) = (values.grad_logp[r] as f64, values.grad_entropy[r] as f64);
        let h = if case.entropy {
            cpu_entropy[r].abs() as f64
        } else {
            0.0
        };
        for (j, log_p) in log_softmax(row, case.temperature).into_iter().enumerate() {
            let k = r * v + j;
            let (g_j, want) = (got[k], cpu_dlogits[k]);
            let p = log_p.exp();
            let entropy_part = if case.entropy {
                gh.abs() * (1.0 + if p > 0.0 { log_p.abs() } else { 0.0 } + h)
            } else {
                0.0
            };
            let tol = 2.0 * p * (g.abs() + entropy_part) / case.temperature * eps
                + 2f64.powi(-22) * want.abs();
            let g = g_j;
            let near = (g.to_f32() as f64 - want).abs() <= tol;
            let one_unit = T::ulps(g, T::from_f32(want as f32)) <= 1;
            assert!(
                near || (T::DTYPE != "float32" && one_unit),
                "{what}: dlogits[{r}, {j}] {:e} vs cpu {want:e} (tol {tol:e})",
                g.to_f32()
            );
        }
    }
}

const DTYPES: [Dtype; 3] = [Dtype::F32, Dtype::Bf16, Dtype::F16];

/// Vocabularies: one token; 7 (under one pack); 8 and 64 (whole packs of every type); 1000
/// (whole float32 and half packs); 1003 (neither: a scalar tail); 1004 (whole float32 packs,
/// not half); 4096 (more packs than threads: two packs in flight per thread); 4099.
const VOCABS: [usize; 9] = [1, 7, 8, 64, 1000, 1003, 1004, 4096, 4099];

#[test]
fn selective_log_softmax_every_dtype_and_vocabulary_matches_the_cpu_engine() {
    let mut rng = Rng(21);
    for (k, &vocab) in VOCABS.iter().enumerate() {
        for (d, dtype) in DTYPES.into_iter().enumerate() {
            let rows = if vocab >= 4096 { 3 } else { 5 };
            let case = Case {
                dtype,
                rows,
                vocab,
                layout: Layout::Dense(Align::On16),
                temperature: if (k + d) % 2 == 0 { 1.0 } else { 0.7 },
                entropy: (k + d) % 3 != 0,
                banned: false,
                offset: 0.0,
                backward: match (k + d) % 3 {
                    0 => Backward::Recompute(Align::On16),
                    1 => Backward::Saved(Align::On16),
                    _ => Backward::InPlace,
                },
            };
            case.check(&mut rng);
        }
    }
}

#[test]
fn selective_log_softmax_strided_and_unaligned_layouts_match_the_cpu_engine() {
    let mut rng = Rng(22);
    let layouts = [
        Layout::Dense(Align::Off16),
        Layout::TrlView { batch: 2 },
        Layout::ColumnSlice,
    ];
    for layout in layouts {
        for dtype in DTYPES {
            // A vocabulary of whole packs (the view's rows are then 16-byte aligned) and one
            // of none.
            for vocab in [1000, 1003] {
                for backward in [
                    Backward::Recompute(Align::Off16),
                    Backward::Saved(Align::On16),
                    Backward::InPlace,
                    Backward::LikeLogits,
                    Backward::OwnLayout,
                ] {
                    let case = Case {
                        dtype,
                        rows: 4,
                        vocab,
                        layout,
                        temperature: 0.9,
                        entropy: backward != Backward::InPlace,
                        banned: false,
                        offset: 0.0,
                        backward,
                    };
                    case.check(&mut rng);
                }
            }
        }
    }
}

#[test]
fn selective_log_softmax_banned_tokens_and_large_logits_match_the_cpu_engine() {
    let mut rng = Rng(23);
    for dtype in DTYPES {
        for (offset, temperature) in [(0.0, 1.0), (0.0, 1.3), (1.0e4, 1.0)] {
            // float16 holds logits up to 65504, but not 1e4 + 8 to within 0.01: an offset of
            // 1e4 is a float32 and bfloat16 case.
            if offset > 0.0 && dtype == Dtype::F16 {
                continue;
            }
            for backward in [
                Backward::Recompute(Align::On16),
                Backward::Saved(Align::On16),
            ] {
                let case = Case {
                    dtype,
                    rows: 3,
                    vocab: 1003,
                    layout: Layout::TrlView { batch: 3 },
                    temperature,
                    entropy: true,
                    banned: offset == 0.0,
                    offset,
                    backward,
                };
                case.check(&mut rng);
            }
        }
    }
}

/// A bad value put into clean inputs, and what must follow in the forward (unless only the
/// backward reads the value) and in the backward (recomputing its statistics, so it reads the
/// logits itself): see [`assert_both_raise`].
struct BadLogits {
    name: &'static str,
    spoil: fn(&mut Values),
    arg: &'static str,
    bit: u32,
    row: u64,
    backward_only: bool,
}

/// The vocabulary of the bad-input cases (4 rows, as a TRL view of 2 x 2).
const BAD_V: usize = 50;

#[rustfmt::skip]
fn bad_logits() -> Vec<BadLogits> {
    let case = |name, spoil, arg, bit, row, backward_only| BadLogits { name, spoil, arg, bit, row, backward_only };
    let bad = status::NONFINITE_INPUT;
    vec![
        // name, spoil, CPU error's argument, bit, row, read by the backward only
        case("NaN logit", |x| x.logits[BAD_V + 4] = f32::NAN, "logits", bad, 1, false),
        case("+inf logit", |x| x.logits[2 * BAD_V + 49] = f32::INFINITY, "logits", bad, 2, false),
        case("row of -inf", |x| x.logits[2 * BAD_V..3 * BAD_V].fill(f32::NEG_INFINITY), "logits", status::EMPTY_ROW, 2, false),
        case("target -1", |x| x.targets[1] = -1, "targets", status::BAD_TARGET, 1, false),
        case("target V", |x| x.targets[2] = BAD_V as i64, "targets", status::BAD_TARGET, 2, false),
        case("NaN grad_logp", |x| x.grad_logp[1] = f32::NAN, "grad_logp", bad, 1, true),
        case("inf grad_entropy", |x| x.grad_entropy[2] = f32::NEG_INFINITY, "grad_entropy", bad, 2, true),
    ]
}

#[test]
fn selective_log_softmax_bad_inputs_set_the_status_where_the_cpu_engine_raises() {
    for bad in bad_logits() {
        check_bad::<f32>(&bad);
        check_bad::<bf16>(&bad);
        check_bad::<f16>(&bad);
    }
}

fn check_bad<T: Float>(bad: &BadLogits) {
    let case = Case {
        dtype: Dtype::F32,
        rows: 4,
        vocab: BAD_V,
        layout: Layout::TrlView { batch: 2 },
        temperature: 1.0,
        entropy: true,
        banned: false,
        offset: 0.0,
        backward: Backward::Recompute(Align::On16),
    };
    let mut values = case.values(&mut Rng(24));
    (bad.spoil)(&mut values);
    let what = format!("{} ({})", bad.name, T::DTYPE);
    let logits = Logits::<T>::new(&values.logits, case.rows, case.vocab, case.layout);
    let n = case.rows;

    let (mut logp, mut entropy) = (vec![0f32; n], vec![0f32; n]);
    let cpu = sgpo_rs::logprob::selective_logprobs(
        &logits.dense,
        case.vocab,
        &values.targets,
        &options(&case),
        ForwardOut {
            logp: &mut logp,
            entropy: Some(&mut entropy),
            stats: None,
        },
    );
    let forward = gpu_forward(&logits, &case, &values.targets, false);
    if bad.backward_only {
        assert!(
            cpu.is_ok(),
            "{what}: the CPU forward raised on values it does not read"
        );
        forward.status.assert_clean(&format!("{what}: forward"));
    } else {
        let what = format!("{what}: forward");
        assert_both_raise(&what, cpu, &forward.status, bad.arg, bad.bit, bad.row);
    }

    let mut dlogits = vec![0f64; n * case.vocab];
    let cpu = sgpo_rs::logprob::selective_logprobs_backward(
        &logits.dense,
        case.vocab,
        &values.targets,
        &options(&case),
        &Upstream {
            grad_logp: &values.grad_logp,
            grad_entropy: Some(&values.grad_entropy),
            stats: None,
        },
        &mut dlogits,
    );
    let mut out = vec![T::from_f32(f32::NAN); n * case.vocab];
    let d_out = output(&mut out, T::DTYPE, &[n, case.vocab]);
    let status = gpu_backward(&logits.describe(), &case, &values, None, &d_out);
    let what = format!("{what}: backward");
    assert_both_raise(&what, cpu, &status, bad.arg, bad.bit, bad.row);
}

/// A confident target (logits 30, 15, then -5: `1 - p_y = 3.06e-7`), and 1e4-sized logits:
/// `logp` and the target's gradient `g (1 - p_y) / T` to 1e-6 relative of the float64 values
/// (the kernel takes `1 - p_y` as `-expm1(log p_y)` so a confident token keeps its small
/// gradient). Returns the worst relative error.
fn confident_target_error(vocab: usize, layout: Layout) -> f64 {
    let rows = 2;
    let mut values = vec![-5.0f32; rows * vocab];
    values[0] = 30.0;
    values[1.min(vocab - 1)] = 15.0;
    for (j, x) in values[vocab..].iter_mut().enumerate() {
        *x = 1.0e4 - [0.0, 0.5, 3.0][j % 3];
    }
    let logits = Logits::<f32>::new(&values, rows, vocab, layout);
    let case = Case {
        dtype: Dtype::F32,
        rows,
        vocab,
        layout,
        temperature: 1.0,
        entropy: false,
        banned: false,
        offset: 0.0,
        backward: Backward::Recompute(Align::On16),
    };
    let values = Values {
        logits: values,
        targets: vec![0, 1],
        grad_logp: vec![1.0, -2.0],
        grad_entropy: vec![0.0; rows],
    };
    let forward = gpu_forward(&logits, &case, &values.targets, false);
    forward.status.assert_clean("confident");
    let mut out = vec![f32::NAN; rows * vocab];
    let d_out = output(&mut out, "float32", &[rows, vocab]);
    gpu_backward(&logits.describe(), &case, &values, None, &d_out).assert_clean("confident");
    let mut worst = 0f64;
    for r in 0..rows {
        let row = &values.logits[r * vocab..(r + 1) * vocab];
        let log_p = log_softmax(row, 1.0)[values.targets[r] as usize];
        let want_grad = values.grad_logp[r] as f64 * -log_p.exp_m1();
        let got_grad = out[r * vocab + values.targets[r] as usize] as f64;
        worst = worst
            .max((forward.logp[r] as f64 - log_p).abs() / log_p.abs())
            .max((got_grad - want_grad).abs() / want_grad.abs());
    }
    worst
}

#[test]
fn selective_log_softmax_confident_targets_keep_their_precision_on_the_scalar_path() {
    // Rows the kernels read one logit at a time: under one pack, rows off the 16-byte
    // boundary, a column slice.
    for (vocab, layout) in [
        (3, Layout::Dense(Align::On16)),
        (1003, Layout::Dense(Align::On16)),
        (1000, Layout::Dense(Align::Off16)),
        (1000, Layout::ColumnSlice),
    ] {
        let worst = confident_target_error(vocab, layout);
        assert!(
            worst <= 1e-6,
            "V {vocab} {layout:?}: relative error {worst:e}"
        );
    }
}

#[test]
fn selective_log_softmax_confident_targets_keep_their_precision_on_the_packed_path() {
    // Rows of whole 16-byte packs on 16-byte boundaries: the target and the runner-up share a
    // pack.
    for vocab in [4, 8, 1004] {
        let worst = confident_target_error(vocab, Layout::Dense(Align::On16));
        assert!(worst <= 1e-6, "V {vocab}: relative error {worst:e}");
    }
}
