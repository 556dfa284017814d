//! Verdicts: the judge's answer, or a PRM's step scores, as `first_error` (0-based index of the
//! earliest wrong step, `-1` = no wrong step).
//!
//! A critic answers in `\boxed{k}` (ProcessBench). Only the **last** box counts, because critics
//! restate the format or revise themselves before the final answer. What is inside must be an
//! integer, give or take notation a model adds (spaces, `+`, the minus sign U+2212, `\text{}`);
//! anything else is "no verdict" (`None`), never a guess: a wrong verdict becomes a wrong reward,
//! a missing one only leaves its group as plain GRPO.

use rayon::prelude::*;

use crate::error::{Error, Result};

/// Formatting commands a model may wrap the index in; `{k}` (a bare group) is unwrapped too.
const WRAPPERS: [&str; 6] = [
    "\\text", "\\textrm", "\\textbf", "\\mathrm", "\\mathbf", "\\mbox",
];

/// The step index in the last `\boxed{...}` of `judge_text`, if it is an integer `k >= -1` (and
/// `k < num_steps` when `num_steps` is given); otherwise `None`.
///
/// The box is brace-balanced (`\boxed{\text{3}}`), and `\{`/`\}` are literal braces. An unclosed
/// last box is `None` even if an earlier box is closed: the critic's final answer is broken.
pub fn parse_verdict(judge_text: &str, num_steps: Option<usize>) -> Option<i64> {
    let k = integer(last_box(judge_text)?)?;
    let in_range = match num_steps.map(i64::try_from) {
        None => true,
        Some(Ok(n)) => k < n,
        // A count beyond i64 bounds nothing an i64 holds.
        Some(Err(_)) => true,
    };
    (k >= -1 && in_range).then_some(k)
}

/// [`parse_verdict`] of many judge answers, in parallel, with an optional `num_steps` per answer;
/// the output is in input order.
pub fn parse_verdicts<S>(judge_texts: &[S], num_steps: Option<&[i64]>) -> Result<Vec<Option<i64>>>
where
    S: AsRef<str> + Sync,
{
    let bounds: Vec<Option<usize>> = match num_steps {
        None => vec![None; judge_texts.len()],
        Some(n) if n.len() != judge_texts.len() => {
            return Err(Error::shape(
                "num_steps",
                format!("({},) like judge_texts", judge_texts.len()),
                format!("({},)", n.len()),
            ))
        }
        Some(n) => n
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                usize::try_from(n).map(Some).map_err(|_| {
                    Error::value("num_steps", format!("expected counts >= 0, got {n} at {i}"))
                })
            })
            .collect::<Result<_>>()?,
    };
    Ok(judge_texts
        .par_iter()
        .zip(bounds)
        // Parsing one answer takes about a microsecond: batch them so scheduling stays negligible.
        .with_min_len(512)
        .map(|(text, n)| parse_verdict(text.as_ref(), n))
        .collect())
}

/// First error from PRM step scores (probability that each step is correct): the first step
/// scoring below `threshold`, or `-1` if none does (also for no steps). A NaN score is an error,
/// not a pass or a fail: the PRM did not score that step.
pub fn first_error_from_scores(scores: &[f64], threshold: f64) -> Result<i64> {
    if threshold.is_nan() {
        return Err(Error::value("threshold", "expected a number, got NaN"));
    }
    if let Some(at) = scores.iter().position(|s| s.is_nan()) {
        return Err(Error::value(
            "scores",
            format!("NaN at index {at}: every step needs a score"),
        ));
    }
    Ok(scores
        .iter()
        .position(|&s| s < threshold)
        // A slice never holds more than isize::MAX elements, so the index fits an i64.
        .map_or(-1, |at| i64::try_from(at).unwrap_or(i64::MAX)))
}

/// The content of the last `\boxed{...}` (whitespace allowed before `{`), `None` if there is no
/// box or the last one is not closed.
fn last_box(text: &str) -> Option<&str> {
    const BOXED: &str = "\\boxed";
    let bytes = text.as_bytes();
    let mut end = text.len();
    loop {
        let at = text.get(..end)?.rfind(BOXED)?;
        let mut open = at + BOXED.len();
        while bytes.get(open).is_some_and(|b| b.is_ascii_whitespace()) {
            open += 1;
        }
        if bytes.get(open) == Some(&b'{') {
            return group(text, open);
        }
        // `\boxed` not followed by `{` (prose, `\boxedfoo`): look further back.
        end = at;
    }
}

/// The content of the brace group opening at byte `open`, `None` if it is never closed.
fn group(text: &str, open: usize) -> Option<&str> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut at = open;
    while let Some(&b) = bytes.get(at) {
        match b {
            // `\{`, `\}` and `\\` are escapes, not structure. Skipping one byte after a backslash
            // never lands inside a multi-byte char on a brace: UTF-8 continuation bytes are >= 0x80.
            b'\\' => at += 1,
            b'{' => depth += 1,
            b'}' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return text.get(open + 1..at);
                }
            }
            _ => {}
        }
        at += 1;
    }
    None
}

/// `s` without surrounding whitespace and without wrappers (`\text{...}`, `{...}`) around all of
/// it, repeatedly.
///
/// Layers are peeled from both ends without matching braces: that keeps deep nesting linear, and
/// it cannot accept a wrong integer, because the caller only accepts a core of bare digits. Such
/// a core means every peeled `{` lies before the digits and every peeled `}` after them, which is
/// correctly nested; any other shape (`{1}{2}` -> `1}{2`) leaves a brace in the core and fails.
fn unwrap(mut s: &str) -> &str {
    loop {
        s = s.trim();
        let Some(body) = s.strip_suffix('}') else {
            return s;
        };
        let inner = WRAPPERS
            .iter()
            .filter_map(|w| body.strip_prefix(w))
            .map(str::trim_start)
            .chain(std::iter::once(body))
            .find_map(|rest| rest.strip_prefix('{'));
        match inner {
            Some(inner) => s = inner,
            None => return s,
        }
    }
}

/// A decimal integer with an optional sign (`+`, `-`, U+2212), spaces and wrappers; `None` for
/// anything else, including values beyond i64.
fn integer(content: &str) -> Option<i64> {
    let s = unwrap(content);
    let (negative, rest) = if let Some(rest) = s.strip_prefix(['-', '\u{2212}']) {
        (true, rest)
    } else {
        (false, s.strip_prefix('+').unwrap_or(s))
    };
    let digits = unwrap(rest);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut value: i64 = 0;
    for b in digits.bytes() {
        value = value.checked_mul(10)?.checked_add(i64::from(b - b'0'))?;
    }
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(text: &str) -> Option<i64> {
        parse_verdict(text, None)
    }

    #[test]
    fn plain_boxes() {
        assert_eq!(verdict("so the answer is \\boxed{3}."), Some(3));
        assert_eq!(verdict("\\boxed{0}"), Some(0));
        assert_eq!(verdict("\\boxed{-1}"), Some(-1));
        assert_eq!(verdict("\\boxed{007}"), Some(7));
    }

    #[test]
    fn last_box_wins() {
        assert_eq!(verdict("\\boxed{1} no wait \\boxed{2}"), Some(2));
        assert_eq!(
            verdict("format: \"\\boxed{k}\". Answer: \\boxed{4}"),
            Some(4)
        );
        // The last box is the answer even when it is not an integer: no fallback to an earlier one.
        assert_eq!(verdict("\\boxed{4} (write it as \"\\boxed{k}\")"), None);
        assert_eq!(verdict("\\boxed{1} then \\boxed{2"), None);
        assert_eq!(verdict("\\boxed{\\boxed{2}}"), Some(2));
    }

    #[test]
    fn notation_is_tolerated() {
        assert_eq!(verdict("\\boxed{ -1 }"), Some(-1));
        assert_eq!(verdict("\\boxed{+2}"), Some(2));
        assert_eq!(verdict("\\boxed{\u{2212}1}"), Some(-1));
        assert_eq!(verdict("\\boxed{- 1}"), Some(-1));
        assert_eq!(verdict("\\boxed{\\text{3}}"), Some(3));
        assert_eq!(verdict("\\boxed{\\text {3}}"), Some(3));
        assert_eq!(verdict("\\boxed{\\mathrm{ 3 }}"), Some(3));
        assert_eq!(verdict("\\boxed{\\textbf{\\text{-1}}}"), Some(-1));
        assert_eq!(verdict("\\boxed{-\\text{1}}"), Some(-1));
        assert_eq!(verdict("\\boxed{{5}}"), Some(5));
        assert_eq!(verdict("\\boxed {5}"), Some(5));
        assert_eq!(verdict("\\boxed\n{5}"), Some(5));
        assert_eq!(verdict("\\boxedfoo{1} \\boxed"), None);
        assert_eq!(verdict("\\boxed{2} and \\boxed is how"), Some(2));
    }

    #[test]
    fn anything_else_is_no_verdict() {
        for text in [
            "",
            "no box at all: 3",
            "\\boxed{}",
            "\\boxed{ }",
            "\\boxed{2",
            "\\boxed{3.0}",
            "\\boxed{1,000}",
            "\\boxed{3 4}",
            "\\boxed{--1}",
            "\\boxed{+-1}",
            "\\boxed{-}",
            "\\boxed{paragraph 3}",
            "\\boxed{\\text{3}4}",
            "\\boxed{\\{3\\}}",
            "\\boxed{3\\}",
            "\\boxed{-2}",
            "\\boxed{99999999999999999999999}",
            "\\boxed{9223372036854775808}",
            "\\boxed{-9223372036854775809}",
            "\\boxed{\u{ff13}}",
        ] {
            assert_eq!(verdict(text), None, "{text:?}");
        }
        assert_eq!(
            verdict("\\boxed{9223372036854775807}"),
            Some(i64::MAX),
            "the largest i64 still parses"
        );
    }

    #[test]
    fn num_steps_bounds_the_index() {
        assert_eq!(parse_verdict("\\boxed{2}", Some(3)), Some(2));
        assert_eq!(parse_verdict("\\boxed{3}", Some(3)), None);
        assert_eq!(parse_verdict("\\boxed{-1}", Some(3)), Some(-1));
        assert_eq!(parse_verdict("\\boxed{-1}", Some(0)), Some(-1));
        assert_eq!(parse_verdict("\\boxed{0}", Some(0)), None);
        assert_eq!(parse_verdict("\\boxed{5}", Some(usize::MAX)), Some(5));
    }

    #[test]
    fn batch_checks_num_steps() {
        let texts = ["\\boxed{1}", "\\boxed{5}", "none"];
        assert_eq!(
            parse_verdicts(&texts, None),
            Ok(vec![Some(1), Some(5), None])
        );
        assert_eq!(
            parse_verdicts(&texts, Some(&[2, 3, 4])),
            Ok(vec![Some(1), None, None])
        );
        let short = parse_verdicts(&texts, Some(&[2])).unwrap_err().to_string();
        assert!(short.starts_with("num_steps:"), "{short}");
        let negative = parse_verdicts(&texts, Some(&[2, -1, 4]))
            .unwrap_err()
            .to_string();
        assert!(negative.starts_with("num_steps:"), "{negative}");
    }

    #[test]
    fn scores_to_first_error() {
        assert_eq!(first_error_from_scores(&[0.9, 0.7, 0.2, 0.1], 0.5), Ok(2));
        assert_eq!(first_error_from_scores(&[0.9, 0.5], 0.5), Ok(-1));
        assert_eq!(first_error_from_scores(&[], 0.5), Ok(-1));
        assert_eq!(first_error_from_scores(&[f64::NEG_INFINITY], 0.5), Ok(0));
        let nan = first_error_from_scores(&[0.9, f64::NAN], 0.5)
            .unwrap_err()
            .to_string();
        assert!(
            nan.starts_with("scores:") && nan.contains("index 1"),
            "{nan}"
        );
        let threshold = first_error_from_scores(&[0.9], f64::NAN)
            .unwrap_err()
            .to_string();
        assert!(threshold.starts_with("threshold:"), "{threshold}");
    }
}
