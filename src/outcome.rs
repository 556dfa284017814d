//! verl's outcome advantage (`compute_grpo_outcome_advantage`): each response's score is the sum
//! of its token rewards over all `L` columns, scores are normalised within their prompt's group
//! ([`crate::advantages::group_advantages`] with [`AdvantageOptions::VERL`]), and the scalar is
//! broadcast over the response mask. Two passes over `(N, L)` data and nothing else: the row sums,
//! then one fused write of `a_i * mask[i, t]`. At verl's sizes (8192 x 8192) the group statistics
//! are microseconds; the passes are the whole cost, so both run in parallel at memory speed.

use rayon::prelude::*;

use crate::advantages::{group_advantages, token_advantages_rows, AdvantageOptions};
use crate::elem::MaskElem;
use crate::error::{Error, Result};
use crate::groups::Groups;
use crate::rows::Rows;

/// Rows per rayon task for the row sums.
const SCORE_ROWS_PER_TASK: usize = 8;

/// Sum of one row in f64, eight independent lanes (they vectorise; the order is fixed, so the
/// result does not depend on the thread count).
fn row_sum(row: &[f32]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let mut chunks = row.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += x as f64;
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&x| x as f64).sum();
    let pairs = [
        lanes[0] + lanes[4],
        lanes[1] + lanes[5],
        lanes[2] + lanes[6],
        lanes[3] + lanes[7],
    ];
    (pairs[0] + pairs[2]) + (pairs[1] + pairs[3]) + tail
}

/// Each response's score `s_i = sum_t R[i, t]`, rounded to float32 as verl holds it (its
/// `token_level_rewards.sum(-1)` is a float32 tensor). A NaN or infinite score is an error: verl
/// would spread it over the whole group's advantages.
pub fn sequence_scores(token_rewards: Rows<'_, f32>) -> Result<Vec<f64>> {
    let mut scores = vec![0.0f64; token_rewards.num_rows()];
    scores
        .par_chunks_mut(SCORE_ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, scores)| {
            for (r, score) in scores.iter_mut().enumerate() {
                let row = token_rewards.row(task * SCORE_ROWS_PER_TASK + r);
                *score = row_sum(row) as f32 as f64;
            }
        });
    if let Some(row) = scores.iter().position(|s| !s.is_finite()) {
        let values = token_rewards.row(row);
        let (t, &value) = values
            .iter()
            .enumerate()
            .find(|(_, v)| !v.is_finite())
            .unwrap_or((0, &f32::INFINITY));
        return Err(Error::NonFinite {
            arg: "token_level_rewards",
            value: value as f64,
            at: if value.is_finite() {
                format!("row {row} (its sum overflows float32)")
            } else {
                format!("({row}, {t})")
            },
        });
    }
    Ok(scores)
}

/// Group-normalised advantages of the scores (`scores[i]` as in [`sequence_scores`], or
/// SGPO-diversified ones), written as `out[i, t] = a_i * mask[i, t]` (C-contiguous `(N, L)`).
/// Returns the per-response `a_i`.
pub fn outcome_advantages<M: MaskElem>(
    scores: &[f64],
    mask: Rows<'_, M>,
    groups: &Groups,
    options: AdvantageOptions,
    out: &mut [f32],
) -> Result<Vec<f32>> {
    if mask.num_rows() != scores.len() {
        return Err(Error::shape(
            "response_mask",
            format!("({}, L), one row per response", scores.len()),
            format!("({}, {})", mask.num_rows(), mask.len()),
        ));
    }
    let advantages = group_advantages(scores, groups, options)?;
    token_advantages_rows(&advantages, mask, out)?;
    Ok(advantages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_sum_every_column_and_round_to_f32() {
        let rewards = [0.1f32, 0.2, 0.0, 0.0, 0.0, 1.0];
        let scores = sequence_scores(Rows::contiguous("r", &rewards, 2, 3).unwrap()).unwrap();
        assert_eq!(
            scores,
            vec![(0.1f64 as f32 as f64 + 0.2f32 as f64) as f32 as f64, 1.0]
        );
        let bad = [1.0f32, f32::NAN];
        let err = sequence_scores(Rows::contiguous("r", &bad, 1, 2).unwrap()).unwrap_err();
        assert!(
            err.to_string().contains("token_level_rewards") && err.to_string().contains("(0, 1)")
        );
    }

    #[test]
    fn outcome_matches_grpo_on_a_strided_mask() {
        // Rows of length 2 inside a mask of width 3 (the prompt column is skipped).
        let mask = [7i64, 1, 1, 7, 1, 0, 7, 0, 0, 7, 1, 1];
        let mask = Rows::strided("m", &mask[1..], 4, 2, 3).unwrap();
        let groups = Groups::from_ids(&[0, 1, 0, 1]).unwrap();
        let mut out = vec![f32::NAN; 8];
        let a = outcome_advantages(
            &[1.0, 0.0, 0.0, 2.0],
            mask,
            &groups,
            AdvantageOptions::VERL,
            &mut out,
        )
        .unwrap();
        let expected = (0.5f64 / (0.5f64.sqrt() + 1e-6)) as f32;
        assert!((a[0] - expected).abs() < 1e-6 && (a[2] + expected).abs() < 1e-6);
        assert_eq!(&out[..4], &[a[0], a[0], a[1], 0.0]);
        assert_eq!(&out[4..], &[0.0, 0.0, a[3], a[3]]);
    }
}
