//! The selective log-softmax against a float64 reference: both paths (float32 exponentials and
//! float64), every output dtype, saved statistics, banned tokens and bad inputs.

use super::*;
use half::{bf16, f16};

/// The forward with the options spelled out (`fast`: float32 exponentials allowed).
#[allow(clippy::too_many_arguments)]
fn forward<T: FloatElem>(
    logits: &[T],
    vocab: usize,
    targets: &[i64],
    temperature: f64,
    logp: &mut [f32],
    entropy: Option<&mut [f32]>,
    stats: Option<&mut [f64]>,
    fast: bool,
) -> Result<()> {
    let options = LogprobOptions {
        temperature,
        float32_exp: fast,
    };
    let out = ForwardOut {
        logp,
        entropy,
        stats,
    };
    selective_logprobs(logits, vocab, targets, &options, out)
}

/// The backward with the options spelled out.
#[allow(clippy::too_many_arguments)]
fn backward<T: FloatElem, O: GradElem>(
    logits: &[T],
    vocab: usize,
    targets: &[i64],
    temperature: f64,
    grad_logp: &[f32],
    grad_entropy: Option<&[f32]>,
    stats: Option<&[f64]>,
    dlogits: &mut [O],
    fast: bool,
) -> Result<()> {
    let options = LogprobOptions {
        temperature,
        float32_exp: fast,
    };
    let upstream = Upstream {
        grad_logp,
        grad_entropy,
        stats,
    };
    selective_logprobs_backward(logits, vocab, targets, &options, &upstream, dlogits)
}

/// Plain two-pass float64 reference: `(logp_y, H, dlogits)`.
fn reference(row: &[f64], y: usize, temp: f64, g: f64, g_h: f64) -> (f64, f64, Vec<f64>) {
    let z: Vec<f64> = row.iter().map(|x| x / temp).collect();
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    let logp: Vec<f64> = z.iter().map(|v| v - lse).collect();
    let p: Vec<f64> = logp.iter().map(|l| l.exp()).collect();
    let h = -p
        .iter()
        .zip(&logp)
        .map(|(p, l)| if *p == 0.0 { 0.0 } else { p * l })
        .sum::<f64>();
    let grad = (0..row.len())
        .map(|j| {
            let pl = if p[j] == 0.0 {
                0.0
            } else {
                p[j] * (logp[j] + h)
            };
            (g * ((j == y) as u8 as f64 - p[j]) - g_h * pl) / temp
        })
        .collect();
    (logp[y], h, grad)
}

fn pseudo_logits(n: usize, v: usize, scale: f64) -> Vec<f64> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    (0..n * v)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 11) as f64 / (1u64 << 53) as f64 - 0.5) * scale
        })
        .collect()
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol * (1.0 + b.abs())
}

fn check_against_reference(n: usize, v: usize, scale: f64, temp: f64) {
    check_path(n, v, scale, temp, true);
    check_path(n, v, scale, temp, false);
}

/// The `avx2` path (where the CPU has it; `fast`) or the f64 path against the reference.
fn check_path(n: usize, v: usize, scale: f64, temp: f64, fast: bool) {
    let x64 = pseudo_logits(n, v, scale);
    let x: Vec<f32> = x64.iter().map(|&v| v as f32).collect();
    let xr: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let targets: Vec<i64> = (0..n).map(|i| ((i * 7919) % v) as i64).collect();
    let mut logp = vec![0.0f32; n];
    let mut ent = vec![0.0f32; n];
    forward(&x, v, &targets, temp, &mut logp, Some(&mut ent), None, fast).unwrap();
    let g: Vec<f32> = (0..n).map(|i| 0.5 + i as f32).collect();
    let gh: Vec<f32> = (0..n).map(|i| -0.25 * i as f32).collect();
    let mut d = vec![0.0f32; n * v];
    backward(&x, v, &targets, temp, &g, Some(&gh), None, &mut d, fast).unwrap();
    // Without the entropy term the gradient is the same formula with g_H = 0.
    let mut d0 = vec![0.0f32; n * v];
    backward(&x, v, &targets, temp, &g, None, None, &mut d0, fast).unwrap();
    for i in 0..n {
        let (lp, h, grad) = reference(
            &xr[i * v..(i + 1) * v],
            targets[i] as usize,
            temp,
            g[i] as f64,
            gh[i] as f64,
        );
        assert!(close(logp[i] as f64, lp, 1e-6), "logp {} vs {lp}", logp[i]);
        assert!(close(ent[i] as f64, h, 1e-6), "entropy {} vs {h}", ent[i]);
        let gmax = grad.iter().fold(0.0f64, |a, b| a.max(b.abs()));
        for j in 0..v {
            let got = d[i * v + j] as f64;
            assert!(
                (got - grad[j]).abs() <= 1e-6 * gmax.max(1e-30) + 1e-6 * grad[j].abs(),
                "grad ({i}, {j}): {got} vs {}",
                grad[j]
            );
        }
        let (_, _, grad0) = reference(
            &xr[i * v..(i + 1) * v],
            targets[i] as usize,
            temp,
            g[i] as f64,
            0.0,
        );
        let gmax = grad0.iter().fold(0.0f64, |a, b| a.max(b.abs()));
        for j in 0..v {
            let got = d0[i * v + j] as f64;
            assert!(
                (got - grad0[j]).abs() <= 1e-6 * gmax.max(1e-30) + 1e-6 * grad0[j].abs(),
                "grad without entropy ({i}, {j}): {got} vs {}",
                grad0[j]
            );
        }
    }
}

#[test]
fn matches_float64_reference() {
    check_against_reference(3, 1, 4.0, 1.0);
    check_against_reference(5, 7, 4.0, 0.7);
    check_against_reference(4, 1000, 20.0, 1.3);
    check_against_reference(2, 2 * CHUNK + 3, 8.0, 1.0);
    check_against_reference(2, 5000, 2e4, 0.7);
}

#[test]
fn large_vocabulary_accuracy() {
    check_against_reference(2, 152_064, 30.0, 1.0);
    check_against_reference(2, 152_064, 3.0, 0.7);
}

#[test]
fn the_max_growing_late_rescales_the_sums() {
    // Increasing logits: the max changes in every chunk.
    let v = 20_000;
    let x: Vec<f32> = (0..2 * v).map(|k| (k % v) as f32 * 1e-3).collect();
    let t = [19_999i64, 3];
    for fast in [true, false] {
        let mut lp = [0.0f32; 2];
        let mut h = [0.0f32; 2];
        forward(&x, v, &t, 0.9, &mut lp, Some(&mut h), None, fast).unwrap();
        let xr: Vec<f64> = x[..v].iter().map(|&v| v as f64).collect();
        for (i, &y) in t.iter().enumerate() {
            let (r, hr, _) = reference(&xr, y as usize, 0.9, 1.0, 0.0);
            assert!(close(lp[i] as f64, r, 1e-6), "{fast} {} vs {r}", lp[i]);
            assert!(close(h[i] as f64, hr, 1e-6), "{fast} {} vs {hr}", h[i]);
        }
    }
}

#[test]
fn half_types_read_like_their_f32_values() {
    let v = 300;
    let x = pseudo_logits(2, v, 10.0);
    let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f64(v)).collect();
    let xh: Vec<f16> = x.iter().map(|&v| f16::from_f64(v)).collect();
    let xbf: Vec<f32> = xb.iter().map(|v| v.to_f32()).collect();
    let xhf: Vec<f32> = xh.iter().map(|v| v.to_f32()).collect();
    let t = [3i64, 299];
    let run = |f: &dyn Fn(&mut [f32])| {
        let mut out = vec![0.0f32; 2];
        f(&mut out);
        out
    };
    let a = run(&|o| forward(&xb, v, &t, 1.0, o, None, None, true).unwrap());
    let b = run(&|o| forward(&xbf, v, &t, 1.0, o, None, None, true).unwrap());
    assert_eq!(a, b);
    let a = run(&|o| forward(&xh, v, &t, 1.0, o, None, None, true).unwrap());
    let b = run(&|o| forward(&xhf, v, &t, 1.0, o, None, None, true).unwrap());
    assert_eq!(a, b);
}

#[test]
fn gradients_in_every_output_dtype() {
    // Half outputs are the f32 gradient rounded to nearest even (the target's element is
    // rounded once from f64, so it may differ from the f32 one's rounding by an ulp); f64
    // outputs of f32 logits hold the f32 path's values.
    let (n, v) = (3, 1037);
    let x: Vec<bf16> = pseudo_logits(n, v, 12.0)
        .iter()
        .map(|&v| bf16::from_f64(v))
        .collect();
    let t = [5i64, 1036, 0];
    let g = [1.0f32, -2.5, 0.75];
    let gh = [0.5f32, 1.0, -3.0];
    for fast in [true, false] {
        let mut d32 = vec![0.0f32; n * v];
        backward(&x, v, &t, 0.7, &g, Some(&gh), None, &mut d32, fast).unwrap();
        let mut d64 = vec![0.0f64; n * v];
        backward(&x, v, &t, 0.7, &g, Some(&gh), None, &mut d64, fast).unwrap();
        let mut db = vec![bf16::ZERO; n * v];
        backward(&x, v, &t, 0.7, &g, Some(&gh), None, &mut db, fast).unwrap();
        let mut dh = vec![f16::ZERO; n * v];
        backward(&x, v, &t, 0.7, &g, Some(&gh), None, &mut dh, fast).unwrap();
        for k in 0..n * v {
            let is_target = t.iter().enumerate().any(|(i, &y)| k == i * v + y as usize);
            if is_target {
                let ulp = (db[k].to_f64() - bf16::from_f32(d32[k]).to_f64()).abs();
                assert!(ulp <= d32[k].abs() as f64 / 64.0, "{k}");
                continue;
            }
            if fast {
                assert_eq!(d64[k], d32[k] as f64, "{k}");
            } else {
                assert!((d64[k] - d32[k] as f64).abs() <= 1e-7 * d64[k].abs(), "{k}");
            }
            // The f64 path rounds each half once from f64; the avx2 path from f32.
            if fast {
                assert_eq!(db[k], bf16::from_f32(d32[k]), "{k}");
                assert_eq!(dh[k], f16::from_f32(d32[k]), "{k}");
            } else {
                assert_eq!(db[k], bf16::from_f64(d64[k]), "{k}");
                assert_eq!(dh[k], f16::from_f64(d64[k]), "{k}");
            }
        }
    }
}

#[test]
fn saved_stats_give_the_same_backward() {
    let (n, v) = (4, 5000);
    let x: Vec<bf16> = pseudo_logits(n, v, 9.0)
        .iter()
        .map(|&v| bf16::from_f64(v))
        .collect();
    let t = [1i64, 4999, 2500, 0];
    let g = [1.0f32, -0.5, 2.0, 0.25];
    let gh = [0.5f32, 1.0, -1.0, 0.0];
    for fast in [true, false] {
        for entropy in [true, false] {
            let mut lp = vec![0.0f32; n];
            let mut h = vec![0.0f32; n];
            let mut st = vec![0.0f64; n * STATS_PER_ROW];
            let h_out = entropy.then_some(&mut h[..]);
            forward(&x, v, &t, 0.8, &mut lp, h_out, Some(&mut st), fast).unwrap();
            for with_h in [true, false] {
                let ghs = with_h.then_some(&gh[..]);
                let mut fresh = vec![bf16::ZERO; n * v];
                backward(&x, v, &t, 0.8, &g, ghs, None, &mut fresh, fast).unwrap();
                let mut reused = vec![bf16::ZERO; n * v];
                backward(&x, v, &t, 0.8, &g, ghs, Some(&st), &mut reused, fast).unwrap();
                assert!(
                    fresh == reused,
                    "fast {fast} entropy {entropy} with_h {with_h}"
                );
            }
        }
    }
    let mut d = vec![0.0f32; n * v];
    let e = backward(&x, v, &t, 0.8, &g, None, Some(&[0.0; 3]), &mut d, true);
    assert!(matches!(e, Err(Error::Shape { arg: "stats", .. })), "{e:?}");
}

#[test]
fn paths_agree_on_banned_tokens_and_bad_logits() {
    for fast in [true, false] {
        let mut row = vec![f32::NEG_INFINITY; 3000];
        row[2999] = 1.0;
        row[17] = -2.0;
        let mut lp = [0.0f32; 2];
        let mut h = [0.0f32; 2];
        let rows: Vec<f32> = row.iter().chain(row.iter()).cloned().collect();
        forward(
            &rows,
            3000,
            &[17, 5],
            1.0,
            &mut lp,
            Some(&mut h),
            None,
            fast,
        )
        .unwrap();
        let (r, hr, _) = reference(&[-2.0, 1.0], 0, 1.0, 1.0, 0.0);
        assert!(close(lp[0] as f64, r, 1e-7), "{fast} {}", lp[0]);
        assert_eq!(lp[1], f32::NEG_INFINITY);
        assert!(close(h[0] as f64, hr, 1e-7), "{fast} {}", h[0]);
        let mut d = vec![0.0f32; 6000];
        backward(
            &rows,
            3000,
            &[17, 5],
            1.0,
            &[1.0, 1.0],
            Some(&[1.0, 1.0]),
            None,
            &mut d,
            fast,
        )
        .unwrap();
        assert!(d.iter().all(|v| v.is_finite()));
        assert_eq!(d[3005], 1.0);
        let mut bad = rows.clone();
        bad[4100] = f32::NAN;
        bad[5000] = f32::INFINITY;
        let e = forward(&bad, 3000, &[17, 5], 1.0, &mut lp, None, None, fast).unwrap_err();
        assert!(e.to_string().contains("(1, 1100)"), "{e}");
        let e = backward(
            &bad,
            3000,
            &[17, 5],
            1.0,
            &[1.0; 2],
            None,
            None,
            &mut d,
            fast,
        );
        assert!(e.unwrap_err().to_string().contains("(1, 1100)"));
    }
}

#[test]
fn negative_infinity_is_a_banned_token() {
    let x = [0.0f32, f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY];
    let mut lp = [0.0f32; 2];
    let mut h = [0.0f32; 2];
    let x2: Vec<f32> = x.iter().chain(x.iter()).cloned().collect();
    forward(&x2, 4, &[2, 1], 1.0, &mut lp, Some(&mut h), None, true).unwrap();
    let (r, hr, _) = reference(&[0.0, 1.0], 1, 1.0, 1.0, 0.0);
    assert!(close(lp[0] as f64, r, 1e-7));
    assert_eq!(lp[1], f32::NEG_INFINITY);
    assert!(close(h[0] as f64, hr, 1e-7));
    let mut d = vec![0.0f32; 8];
    backward(
        &x2,
        4,
        &[2, 1],
        1.0,
        &[1.0, 1.0],
        Some(&[1.0, 1.0]),
        None,
        &mut d,
        true,
    )
    .unwrap();
    assert!(d.iter().all(|v| v.is_finite()));
    assert_eq!(d[1], 0.0);
    assert_eq!(d[5], 1.0);
    // A whole chunk of banned tokens before the first real one.
    let mut row = vec![f32::NEG_INFINITY; CHUNK + 5];
    row[CHUNK + 2] = 3.0;
    let mut lp = [0.0f32; 1];
    forward(
        &row,
        CHUNK + 5,
        &[(CHUNK + 2) as i64],
        1.0,
        &mut lp,
        None,
        None,
        true,
    )
    .unwrap();
    assert_eq!(lp[0], 0.0);
}

#[test]
fn bad_inputs_are_errors_naming_the_argument() {
    let x = [0.0f32; 6];
    let mut lp = [0.0f32; 2];
    let arg = |e: Error| match e {
        Error::Value { arg, .. }
        | Error::Shape { arg, .. }
        | Error::NonFinite { arg, .. }
        | Error::Overflow { arg, .. } => arg,
        other => panic!("unexpected {other:?}"),
    };
    let err = |t: &[i64], temp: f64, x: &[f32], lp: &mut [f32]| {
        arg(forward(x, 3, t, temp, lp, None, None, true).unwrap_err())
    };
    assert_eq!(err(&[0, 3], 1.0, &x, &mut lp), "targets");
    assert_eq!(err(&[0, -1], 1.0, &x, &mut lp), "targets");
    assert_eq!(err(&[0, 1], 0.0, &x, &mut lp), "temperature");
    assert_eq!(err(&[0, 1], f64::NAN, &x, &mut lp), "temperature");
    assert_eq!(err(&[0, 1, 2], 1.0, &x, &mut [0.0; 3]), "logits");
    assert_eq!(err(&[0, 1], 1.0, &x, &mut [0.0; 3]), "logp_out");
    let mut bad = x;
    bad[4] = f32::NAN;
    let e = forward(&bad, 3, &[0, 1], 1.0, &mut lp, None, None, true).unwrap_err();
    assert!(e.to_string().contains("(1, 1)"), "{e}");
    bad[4] = f32::INFINITY;
    assert_eq!(err(&[0, 1], 1.0, &bad, &mut lp), "logits");
    let banned = [f32::NEG_INFINITY; 6];
    assert_eq!(err(&[0, 1], 1.0, &banned, &mut lp), "logits");
    assert_eq!(
        arg(forward(&x, 0, &[], 1.0, &mut [], None, None, true).unwrap_err()),
        "logits"
    );
    let mut d = [0.0f32; 6];
    let e = backward(
        &x,
        3,
        &[0, 1],
        1.0,
        &[1.0, f32::NAN],
        None,
        None,
        &mut d,
        true,
    );
    assert_eq!(arg(e.unwrap_err()), "grad_logp");
    let e = backward(&x, 3, &[0, 1], 1.0, &[1.0], None, None, &mut d, true);
    assert_eq!(arg(e.unwrap_err()), "grad_logp");
    let e = backward(
        &x,
        3,
        &[0, 1],
        1.0,
        &[1.0; 2],
        Some(&[1.0]),
        None,
        &mut d,
        true,
    );
    assert_eq!(arg(e.unwrap_err()), "grad_entropy");
    // Overflow of logits / temperature in float64.
    let big = [f32::MAX; 2];
    let e = forward(&big, 2, &[0], 1e-300, &mut [0.0], None, None, true);
    assert!(matches!(e, Err(Error::Overflow { .. })), "{e:?}");
    // No rows: nothing to do.
    forward::<f32>(&[], 3, &[], 1.0, &mut [], None, None, true).unwrap();
}

#[test]
fn deterministic_across_thread_counts() {
    let x: Vec<f32> = pseudo_logits(16, 3000, 10.0)
        .iter()
        .map(|&v| v as f32)
        .collect();
    let t: Vec<i64> = (0..16).collect();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut lp = vec![0.0f32; 16];
            let mut h = vec![0.0f32; 16];
            forward(&x, 3000, &t, 0.9, &mut lp, Some(&mut h), None, true).unwrap();
            let mut d = vec![0.0f32; x.len()];
            backward(&x, 3000, &t, 0.9, &lp, Some(&h), None, &mut d, true).unwrap();
            (lp, h, d)
        })
    };
    assert_eq!(run(1), run(3));
}

#[test]
fn a_strided_view_is_read_and_written_in_place_bit_for_bit() {
    // TRL's logits[:, :-1] of a (3, 6, V) tensor (with V on and off the SIMD width): 15 rows in
    // groups of 5, each group 6 V apart; the last position of each sequence is not a row.
    for vocab in [37, 64] {
        let (batch, len) = (3, 5);
        let full = pseudo_logits(batch * (len + 1), vocab, 4.0);
        let full: Vec<f32> = full.iter().map(|&x| x as f32).collect();
        let layout = RowLayout::from_strides(
            "logits",
            &[batch, len, vocab],
            &[((len + 1) * vocab) as i64, vocab as i64, 1],
        )
        .unwrap();
        let rows = LogitRows::new("logits", &full, layout).unwrap();
        let dense: Vec<f32> = (0..batch * len)
            .flat_map(|i| rows.row(i).to_vec())
            .collect();
        let targets: Vec<i64> = (0..batch * len).map(|i| (i * 7 % vocab) as i64).collect();
        let (g, gh): (Vec<f32>, Vec<f32>) = (0..batch * len)
            .map(|i| (0.3 * i as f32 - 2.0, 1.0 - 0.1 * i as f32))
            .unzip();
        for fast in [true, false] {
            let options = LogprobOptions {
                temperature: 0.7,
                float32_exp: fast,
            };
            let n = batch * len;
            let (mut lp, mut h, mut st) =
                (vec![0f32; n], vec![0f32; n], vec![0f64; n * STATS_PER_ROW]);
            let out = ForwardOut {
                logp: &mut lp,
                entropy: Some(&mut h),
                stats: Some(&mut st),
            };
            selective_logprobs_rows(rows, &targets, &options, out).unwrap();
            let (mut lp_d, mut h_d) = (vec![0f32; n], vec![0f32; n]);
            let out = ForwardOut {
                logp: &mut lp_d,
                entropy: Some(&mut h_d),
                stats: None,
            };
            selective_logprobs(&dense, vocab, &targets, &options, out).unwrap();
            assert_eq!((&lp, &h), (&lp_d, &h_d), "V {vocab} fast {fast}");
            // The backward into a full-size buffer of the same layout: the rows bit for bit
            // the dense backward's, the other positions untouched.
            let upstream = Upstream {
                grad_logp: &g,
                grad_entropy: Some(&gh),
                stats: Some(&st),
            };
            let mut strided_out = vec![f32::NAN; full.len()];
            selective_logprobs_backward_rows(
                rows,
                &targets,
                &options,
                &upstream,
                &mut strided_out,
                layout,
            )
            .unwrap();
            let mut dense_out = vec![0f32; n * vocab];
            selective_logprobs_backward(
                &dense,
                vocab,
                &targets,
                &options,
                &upstream,
                &mut dense_out,
            )
            .unwrap();
            for b in 0..batch {
                let group = &strided_out[b * (len + 1) * vocab..(b + 1) * (len + 1) * vocab];
                assert_eq!(
                    &group[..len * vocab],
                    &dense_out[b * len * vocab..(b + 1) * len * vocab]
                );
                assert!(
                    group[len * vocab..].iter().all(|x| x.is_nan()),
                    "the last position written"
                );
            }
            // A buffer too small, or rows that overlap, are refused.
            let mut short = vec![0f32; layout.span().unwrap() - 1];
            let err = selective_logprobs_backward_rows(
                rows, &targets, &options, &upstream, &mut short, layout,
            )
            .unwrap_err();
            assert!(err.to_string().contains("dlogits_out"), "{err}");
        }
    }
}
