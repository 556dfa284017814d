//! A deterministic fuzz target for the text parsers a judge's output and a policy's response go
//! through (`split_steps`, `char_spans`, `parse_verdict`, `first_error_from_scores` and their batch
//! forms): random bytes decoded lossily, random mixes of the tokens the parsers care about,
//! mutations of both, and huge and pathological inputs (megabytes, deep nesting, many boxes).
//! Nothing may panic, and every result must satisfy the documented invariants. A fixed seed keeps
//! runs reproducible; the whole file runs in a few seconds in a debug build.

mod common;

use common::Rng;

use std::time::{Duration, Instant};

use sgpo_rs::text::{
    char_spans, first_error_from_scores, parse_verdict, parse_verdicts, split_steps,
    split_steps_batch, Delimiter, Step,
};

/// Tokens that drive the splitter and the verdict parser into their branches.
const TOKENS: [&str; 40] = [
    "\n",
    "\n\n",
    "\n\n\n",
    "\r\n",
    "\r\n\r\n",
    "\r",
    " ",
    "\t",
    "\u{3000}",
    "\u{85}",
    "\u{2028}",
    "a",
    "x = 2.",
    "é",
    "日本",
    "😀",
    "Step 1:",
    "**Step 2:**",
    "### step 3 :",
    "<extra_0>",
    "ки",
    "<paragraph_1>",
    "\\boxed",
    "\\boxed{",
    "\\boxed {",
    "{",
    "}",
    "\\",
    "\\{",
    "\\}",
    "\\text{",
    "\\mathbf{",
    "-",
    "+",
    "\u{2212}",
    "0",
    "7",
    "-1",
    "99999999999999999999",
    "9223372036854775807",
];

fn token_text(rng: &mut Rng, pieces: usize) -> String {
    let mut s = String::new();
    for _ in 0..pieces {
        if rng.chance(85) {
            let token = *rng.pick(&TOKENS);
            s.push_str(token);
        } else {
            let len = 1 + rng.below(6);
            s.push_str(&random_bytes_text(rng, len));
        }
    }
    s
}

/// Arbitrary bytes, decoded as UTF-8 with U+FFFD for the invalid sequences (as a server would
/// decode a corrupted reply).
fn random_bytes_text(rng: &mut Rng, len: usize) -> String {
    let bytes: Vec<u8> = (0..len)
        .map(|_| {
            if rng.chance(30) {
                // Bias towards the ASCII the parsers look at.
                *rng.pick(b"\\{}\n\r boxed0123456789-+")
            } else {
                (rng.next_u64() & 0xFF) as u8
            }
        })
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A critic-like reply: noise, then a final `\boxed{k}` in one of the tolerated notations, then
/// text without backslashes or braces. Returns the reply and `k`.
fn answer_text(rng: &mut Rng) -> (String, i64) {
    let pieces = rng.below(20);
    let prefix = token_text(rng, pieces);
    let k = rng.below(40) as i64 - 1;
    let body = match rng.below(6) {
        0 => format!("{k}"),
        1 => format!(" {k} "),
        2 => format!("\\text{{{k}}}"),
        3 => format!("{{ {k} }}"),
        4 if k >= 0 => format!("+{k}"),
        _ if k < 0 => format!("\u{2212}{}", -k),
        _ => format!("\\mathbf{{{k}}}"),
    };
    let suffix = ["", ".", " That is the first error.", "\n\nDone 😀"][rng.below(4)];
    (format!("{prefix}\\boxed{{{body}}}{suffix}"), k)
}

/// A mutation of `text`: cut at a random char boundary, a random insertion, or a duplication.
fn mutate(rng: &mut Rng, text: &str) -> String {
    let boundaries: Vec<usize> = text
        .char_indices()
        .map(|(i, _)| i)
        .chain([text.len()])
        .collect();
    let at = *rng.pick(&boundaries);
    match rng.below(4) {
        0 => text[..at].to_string(),
        1 => format!("{}{}{}", &text[..at], rng.pick(&TOKENS), &text[at..]),
        2 => format!("{}{}", &text[at..], &text[..at]),
        _ => format!("{text}{text}"),
    }
}

fn delimiters(rng: &mut Rng) -> Vec<Delimiter> {
    let mut out = vec![
        Delimiter::Paragraphs,
        Delimiter::Markers,
        Delimiter::Custom("<extra_0>".into()),
        Delimiter::Custom("ки".into()),
        Delimiter::Custom("\n".into()),
    ];
    let pieces = 1 + rng.below(2);
    let random = token_text(rng, pieces);
    if let Ok(d) = Delimiter::parse(&random) {
        out.push(d);
    }
    out
}

/// Every documented property of `split_steps(text, delimiter)` and its character spans.
fn check_split(text: &str, delimiter: &Delimiter, with_chars: bool) -> usize {
    let steps: Vec<Step<'_>> = split_steps(text, delimiter);
    let mut previous_end = 0;
    for step in &steps {
        assert!(!step.text.is_empty(), "empty step in {text:?}");
        assert!(step.start < step.end && step.end <= text.len());
        assert!(step.start >= previous_end, "steps overlap in {text:?}");
        assert_eq!(&text[step.start..step.end], step.text);
        assert!(!step.text.ends_with(char::is_whitespace), "{:?}", step.text);
        assert!(!step.text.starts_with('\n'), "{:?}", step.text);
        match delimiter {
            Delimiter::Paragraphs => {
                assert!(!step.text.contains("\n\n") && !step.text.contains("\n\r\n"));
            }
            Delimiter::Custom(separator) => assert!(!step.text.contains(separator.as_str())),
            Delimiter::Markers => {}
        }
        previous_end = step.end;
    }
    if text.trim().is_empty() {
        assert!(steps.is_empty(), "whitespace-only text has steps: {text:?}");
    }
    if *delimiter == Delimiter::Paragraphs && !text.contains('\n') {
        assert!(steps.len() <= 1);
    }
    if with_chars {
        let spans = char_spans(text, &steps);
        assert_eq!(spans.len(), steps.len());
        let chars: Vec<char> = text.chars().collect();
        for ((a, b), step) in spans.iter().zip(&steps) {
            assert!(a < b && *b <= chars.len());
            assert_eq!(chars[*a..*b].iter().collect::<String>(), step.text);
        }
    }
    steps.len()
}

/// Every documented property of `parse_verdict(text, ...)`.
fn check_verdict(rng: &mut Rng, text: &str) -> Option<i64> {
    let free = parse_verdict(text, None);
    if let Some(k) = free {
        assert!(k >= -1, "{k} from {text:?}");
        assert!(text.contains("\\boxed"));
        assert!(text.contains(&k.unsigned_abs().to_string()));
    }
    let n = match rng.below(4) {
        0 => 0,
        1 => rng.below(8),
        2 => usize::MAX,
        _ => rng.below(1 << 20),
    };
    let bounded = parse_verdict(text, Some(n));
    if let Some(k) = bounded {
        assert!(k >= -1 && (usize::try_from(k).map_or(true, |k| k < n)));
    }
    // A bound only ever rejects: it never changes an index.
    let expected = free.filter(|&k| usize::try_from(k).map_or(true, |k| k < n));
    assert_eq!(bounded, expected, "{text:?} with n = {n}");
    // Text without a backslash or a brace cannot open, close or escape a box.
    let inert = ["", " so", "\n\nthat is all.", " ки 😀", " 42"][rng.below(5)];
    assert_eq!(parse_verdict(&format!("{text}{inert}"), None), free);
    assert_eq!(parse_verdict(&format!("{inert}{text}"), None), free);
    free
}

/// Checks `text` with every delimiter; returns (a verdict was parsed, the most steps found).
fn check_text(rng: &mut Rng, text: &str, with_chars: bool) -> (bool, usize) {
    let mut most = 0;
    for delimiter in delimiters(rng) {
        most = most.max(check_split(text, &delimiter, with_chars));
    }
    (check_verdict(rng, text).is_some(), most)
}

#[test]
fn random_token_mixes_and_their_mutations() {
    let mut rng = Rng(0x5EED_0001);
    let (mut verdicts, mut multi_step) = (0, 0);
    for _ in 0..1500 {
        let pieces = 1 + rng.below(60);
        let text = if rng.chance(50) {
            let (reply, k) = answer_text(&mut rng);
            assert_eq!(parse_verdict(&reply, None), Some(k), "{reply:?}");
            reply
        } else {
            token_text(&mut rng, pieces)
        };
        let mutated = mutate(&mut rng, &text);
        for t in [text, mutated] {
            let (verdict, steps) = check_text(&mut rng, &t, true);
            verdicts += usize::from(verdict);
            multi_step += usize::from(steps > 1);
        }
    }
    // The generator reaches the interesting cases, not only the "no verdict" one.
    assert!(
        verdicts > 100 && multi_step > 1000,
        "{verdicts} verdicts, {multi_step} multi-step"
    );
}

#[test]
fn random_bytes_decoded_lossily() {
    let mut rng = Rng(0x5EED_0002);
    for _ in 0..1500 {
        let len = rng.below(400);
        let text = random_bytes_text(&mut rng, len);
        check_text(&mut rng, &text, true);
    }
}

#[test]
fn batches_agree_with_single_calls() {
    let mut rng = Rng(0x5EED_0003);
    for _ in 0..30 {
        let texts: Vec<String> = (0..rng.below(700))
            .map(|_| {
                let pieces = rng.below(30);
                token_text(&mut rng, pieces)
            })
            .collect();
        for delimiter in delimiters(&mut rng) {
            let batch = split_steps_batch(&texts, &delimiter);
            assert_eq!(batch.len(), texts.len());
            for (text, steps) in texts.iter().zip(&batch) {
                assert_eq!(*steps, split_steps(text, &delimiter));
            }
        }
        let bounds: Vec<i64> = texts.iter().map(|_| rng.below(10) as i64).collect();
        let verdicts = parse_verdicts(&texts, Some(&bounds)).unwrap();
        for ((text, &n), v) in texts.iter().zip(&bounds).zip(&verdicts) {
            assert_eq!(*v, parse_verdict(text, Some(n as usize)));
        }
        assert!(
            parse_verdicts(&texts, Some(&bounds[..bounds.len().saturating_sub(1)])).is_err()
                || texts.is_empty()
        );
    }
}

#[test]
fn scores_to_first_error() {
    let mut rng = Rng(0x5EED_0004);
    let specials = [
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        0.0,
        -0.0,
        0.5,
        1.0,
        f64::MIN_POSITIVE,
        f64::MAX,
    ];
    for _ in 0..20_000 {
        let scores: Vec<f64> = (0..rng.below(12))
            .map(|_| {
                if rng.chance(10) {
                    *rng.pick(&specials)
                } else {
                    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
                }
            })
            .collect();
        let threshold = if rng.chance(5) {
            *rng.pick(&specials)
        } else {
            (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
        };
        match first_error_from_scores(&scores, threshold) {
            Ok(k) => {
                assert!(!threshold.is_nan() && scores.iter().all(|s| !s.is_nan()));
                assert!(k >= -1 && k < scores.len() as i64);
                let first = scores.iter().position(|&s| s < threshold);
                assert_eq!(k, first.map_or(-1, |i| i as i64));
            }
            Err(_) => assert!(threshold.is_nan() || scores.iter().any(|s| s.is_nan())),
        }
    }
}

/// Runs `f` and asserts it took less than `limit` (generous: linear work on a few megabytes).
fn bounded<T>(limit: Duration, what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    assert!(start.elapsed() < limit, "{what} took {:?}", start.elapsed());
    out
}

#[test]
fn huge_and_pathological_inputs() {
    let limit = Duration::from_secs(10);
    let mut rng = Rng(0x5EED_0005);
    // About 2 MB of random tokens.
    let big = token_text(&mut rng, 250_000);
    bounded(limit, "2 MB of tokens", || {
        check_text(&mut rng, &big, false)
    });

    // Deep nesting, closed and unclosed.
    let depth = 200_000;
    let nested = format!("\\boxed{}3{}", "{".repeat(depth + 1), "}".repeat(depth + 1));
    assert_eq!(
        bounded(limit, "deep nesting", || parse_verdict(&nested, None)),
        Some(3)
    );
    let unclosed = format!("\\boxed{}3", "{".repeat(depth));
    assert_eq!(parse_verdict(&unclosed, None), None);
    let wrapped = format!(
        "\\boxed{{{}4{}}}",
        "\\text{ ".repeat(depth / 4),
        " }".repeat(depth / 4)
    );
    assert_eq!(
        bounded(limit, "deep wrappers", || parse_verdict(&wrapped, None)),
        Some(4)
    );

    // Many boxes: the last one counts; a broken last one is no verdict.
    let many = "\\boxed{1} ".repeat(100_000) + "\\boxed{2}";
    assert_eq!(
        bounded(limit, "many boxes", || parse_verdict(&many, Some(3))),
        Some(2)
    );
    let broken_last = "\\boxed{1}".repeat(100_000) + "\\boxed{";
    assert_eq!(parse_verdict(&broken_last, None), None);
    let opens = "\\boxed{".repeat(200_000);
    assert_eq!(
        bounded(limit, "many opens", || parse_verdict(&opens, None)),
        None
    );
    let bare = "\\boxed ".repeat(200_000);
    assert_eq!(
        bounded(limit, "boxes without braces", || parse_verdict(&bare, None)),
        None
    );
    let escapes = "\\".repeat(300_001) + "{";
    assert_eq!(parse_verdict(&escapes, None), None);

    // Numbers at and beyond the i64 range.
    assert_eq!(
        parse_verdict("\\boxed{9223372036854775807}", None),
        Some(i64::MAX)
    );
    assert_eq!(parse_verdict("\\boxed{9223372036854775808}", None), None);
    assert_eq!(
        parse_verdict(&format!("\\boxed{{{}}}", "9".repeat(100_000)), None),
        None
    );

    // Megabytes of separators and markers, and one huge step.
    for (text, delimiter) in [
        ("\n".repeat(2_000_000), Delimiter::Paragraphs),
        ("\r\n".repeat(1_000_000), Delimiter::Paragraphs),
        ("Step 1:\n".repeat(200_000), Delimiter::Markers),
        (
            "<extra_0>".repeat(200_000),
            Delimiter::Custom("<extra_0>".into()),
        ),
        ("a".repeat(2_000_000), Delimiter::Paragraphs),
        ("x\n\n".repeat(300_000), Delimiter::Paragraphs),
    ] {
        let n = bounded(limit, "separators", || {
            check_split(&text, &delimiter, false)
        });
        assert!(n <= 300_000);
    }
    let many_steps = "x\n\n".repeat(300_000);
    let steps = split_steps(&many_steps, &Delimiter::Paragraphs);
    assert_eq!(steps.len(), 300_000);
}
