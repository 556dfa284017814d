//! Properties of the text kernels on arbitrary and hostile strings: no input panics, step offsets
//! always index back to the step text (bytes and chars), and every in-range `\boxed{k}` parses back
//! to `k` whatever surrounds it. Deterministic tests pin huge inputs that a property test would
//! not draw (deep nesting, megabytes of separators), which must also stay linear in time.

use proptest::prelude::*;
use proptest::test_runner::Config;

use sgpo_rs::text::{
    char_spans, first_error_from_scores, parse_verdict, parse_verdicts, split_steps,
    split_steps_batch, Delimiter, Step,
};

fn config(cases: u32) -> Config {
    Config {
        cases,
        max_shrink_iters: 2000,
        // Failures print their shrunk input; keep the source tree free of regression files.
        failure_persistence: None,
        ..Config::default()
    }
}

/// Pieces that exercise every branch of the splitter and the verdict parser.
const FRAGMENTS: [&str; 30] = [
    "\n",
    "\n\n",
    "\r\n",
    "\r",
    " ",
    "\t",
    "\u{3000}",
    "\u{85}",
    "a",
    "x = 2.",
    "é",
    "日本",
    "😀",
    "Step 1:",
    "**Step 2:**",
    "### step 3 :",
    "\\boxed",
    "\\boxed{",
    "{",
    "}",
    "\\",
    "\\{",
    "\\text{",
    "-",
    "+",
    "\u{2212}",
    "0",
    "7",
    "-1",
    "99999999999999999999",
];

/// Strings made of the fragments above, mixed with arbitrary unicode.
fn hostile_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => prop::sample::select(FRAGMENTS.to_vec()).prop_map(str::to_string),
        1 => any::<String>(),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
}

fn delimiter() -> impl Strategy<Value = Delimiter> {
    prop_oneof![
        Just(Delimiter::Paragraphs),
        Just(Delimiter::Markers),
        prop::sample::select(vec!["\n", "<extra_0>", "ки", "\n\n\n", " ", "Step"])
            .prop_map(|s| Delimiter::Custom(s.to_string())),
        "[^\u{0}]{1,3}".prop_map(Delimiter::Custom),
    ]
}

/// Everything a caller may rely on about `split_steps(text)`.
fn check_steps(text: &str, steps: &[Step<'_>]) {
    let mut previous_end = 0;
    for step in steps {
        assert!(step.start >= previous_end, "steps overlap or go backwards");
        assert_eq!(text.get(step.start..step.end), Some(step.text));
        assert!(!step.text.is_empty());
        assert_eq!(step.text.trim_end(), step.text, "trailing whitespace kept");
        assert!(
            !step.text.starts_with(['\n', '\r']),
            "leading line break kept"
        );
        previous_end = step.end;
    }
    let chars: Vec<char> = text.chars().collect();
    for (step, (start, end)) in steps.iter().zip(char_spans(text, steps)) {
        let by_chars: String = chars[start..end].iter().collect();
        assert_eq!(by_chars, step.text);
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn split_never_panics_and_offsets_index_back(text in hostile_text(), delimiter in delimiter()) {
        let steps = split_steps(&text, &delimiter);
        check_steps(&text, &steps);
        if text.trim().is_empty() {
            prop_assert!(steps.is_empty());
        }
    }

    #[test]
    fn split_of_arbitrary_unicode(text in any::<String>(), delimiter in delimiter()) {
        check_steps(&text, &split_steps(&text, &delimiter));
    }

    #[test]
    fn paragraphs_join_back_to_the_text(text in hostile_text()) {
        // Between two steps there is only whitespace including a blank line; outside them only
        // whitespace: splitting loses nothing but separators.
        let steps = split_steps(&text, &Delimiter::Paragraphs);
        let mut at = 0;
        for step in &steps {
            prop_assert!(text[at..step.start].trim().is_empty());
            at = step.end;
        }
        prop_assert!(text[at..].trim().is_empty());
        for pair in steps.windows(2) {
            let gap = text[pair[0].end..pair[1].start].replace("\r\n", "\n");
            prop_assert!(gap.contains("\n\n"), "steps {:?} and {:?} not separated by a blank line", pair[0].text, pair[1].text);
        }
    }

    #[test]
    fn parse_never_panics(text in hostile_text(), n in prop::option::of(any::<usize>())) {
        if let Some(k) = parse_verdict(&text, n) {
            prop_assert!(k >= -1);
            prop_assert!(text.contains("\\boxed"));
            if let Some(n) = n {
                prop_assert!(i64::try_from(n).map_or(true, |n| k < n));
            }
        }
    }

    #[test]
    fn boxed_index_round_trips(
        prefix in hostile_text(),
        suffix in hostile_text().prop_filter("no later box", |s| !s.contains("\\boxed")),
        n in 1usize..200,
        pick in any::<prop::sample::Index>(),
        style in 0usize..6,
    ) {
        let k = pick.index(n + 1) as i64 - 1; // -1 ..= n - 1
        let body = match style {
            0 => k.to_string(),
            1 => format!(" {k} "),
            2 if k >= 0 => format!("+{k}"),
            3 => format!("\\text{{{k}}}"),
            4 if k < 0 => format!("\u{2212}{}", -k),
            _ => format!("{{\\mathrm{{ {k} }}}}"),
        };
        let text = format!("{prefix}\\boxed{{{body}}}{suffix}");
        prop_assert_eq!(parse_verdict(&text, Some(n)), Some(k), "{:?}", text);
        prop_assert_eq!(parse_verdict(&text, None), Some(k));
        // The same index is out of range for fewer steps.
        if k >= 0 {
            prop_assert_eq!(parse_verdict(&text, Some(k as usize)), None);
        }
    }

    #[test]
    fn batches_match_single_calls(texts in prop::collection::vec(hostile_text(), 0..20), delimiter in delimiter()) {
        let batch = split_steps_batch(&texts, &delimiter);
        prop_assert_eq!(batch.len(), texts.len());
        for (text, steps) in texts.iter().zip(&batch) {
            prop_assert_eq!(steps, &split_steps(text, &delimiter));
        }
        let verdicts = parse_verdicts(&texts, None).unwrap_or_default();
        let single: Vec<Option<i64>> = texts.iter().map(|t| parse_verdict(t, None)).collect();
        prop_assert_eq!(verdicts, single);
    }

    #[test]
    fn scores_give_the_first_step_below_threshold(
        scores in prop::collection::vec(prop_oneof![0.0..1.0f64, Just(f64::NAN), Just(f64::INFINITY)], 0..30),
        threshold in 0.0..1.0f64,
    ) {
        match first_error_from_scores(&scores, threshold) {
            Ok(k) => {
                prop_assert!(scores.iter().all(|s| !s.is_nan()));
                let expect = scores.iter().position(|&s| s < threshold).map_or(-1, |i| i as i64);
                prop_assert_eq!(k, expect);
            }
            Err(e) => {
                prop_assert!(scores.iter().any(|s| s.is_nan()));
                prop_assert!(e.to_string().starts_with("scores:"));
            }
        }
    }
}

// ------------------------------------------------------------------ huge and degenerate inputs

const MB: usize = 1 << 20;

#[test]
fn megabytes_of_separators_and_markers() {
    let blank = "\n".repeat(4 * MB);
    assert!(split_steps(&blank, &Delimiter::Paragraphs).is_empty());
    let crlf = "\r\n".repeat(2 * MB);
    assert!(split_steps(&crlf, &Delimiter::Paragraphs).is_empty());
    let many = "x\n\n".repeat(MB);
    let steps = split_steps(&many, &Delimiter::Paragraphs);
    assert_eq!(steps.len(), MB);
    check_steps(&many, &steps);
    let marked = "Step 1: x\n".repeat(MB / 8);
    assert_eq!(split_steps(&marked, &Delimiter::Markers).len(), MB / 8);
    let long_line = "Step ".to_string() + &"1".repeat(4 * MB);
    assert_eq!(split_steps(&long_line, &Delimiter::Markers).len(), 1);
    let custom = Delimiter::Custom("aa".into());
    assert!(split_steps(&"a".repeat(4 * MB), &custom).len() <= 1);
}

#[test]
fn huge_and_deeply_nested_boxes() {
    let deep = format!("\\boxed{}{}", "{".repeat(4 * MB), "}".repeat(4 * MB));
    assert_eq!(parse_verdict(&deep, None), None);
    let nested_number = format!("\\boxed{}7{}", "{".repeat(MB), "}".repeat(MB));
    assert_eq!(parse_verdict(&nested_number, None), Some(7));
    let unclosed = format!("\\boxed{}", "{".repeat(4 * MB));
    assert_eq!(parse_verdict(&unclosed, None), None);
    let huge_number = format!("\\boxed{{{}}}", "9".repeat(4 * MB));
    assert_eq!(parse_verdict(&huge_number, None), None);
    // Many `\boxed` without a brace: the backwards search must stay linear.
    let prose = "\\boxed ".repeat(MB / 2);
    assert_eq!(parse_verdict(&prose, None), None);
    let answer_first = format!("\\boxed{{3}}{}", "\\boxed ".repeat(MB / 2));
    assert_eq!(parse_verdict(&answer_first, None), Some(3));
    let backslashes = format!("\\boxed{{{}", "\\".repeat(4 * MB + 1));
    assert_eq!(parse_verdict(&backslashes, None), None);
}

#[test]
fn extreme_num_steps() {
    assert_eq!(parse_verdict("\\boxed{0}", Some(0)), None);
    assert_eq!(parse_verdict("\\boxed{-1}", Some(0)), Some(-1));
    assert_eq!(
        parse_verdict("\\boxed{9223372036854775807}", Some(usize::MAX)),
        Some(i64::MAX)
    );
    assert!(parse_verdicts(&["\\boxed{1}"], Some(&[i64::MIN])).is_err());
    assert!(parse_verdicts::<&str>(&[], Some(&[])).is_ok_and(|v| v.is_empty()));
}
