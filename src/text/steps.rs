//! Step segmentation: cut a response into the steps a judge indexes (`first_error`) and a PRM
//! scores.
//!
//! The default follows ProcessBench and the Qwen PRMs: a step is a paragraph, and paragraphs are
//! separated by blank lines (`"\n\n"`). Three refinements keep model output from producing phantom
//! steps: `"\r\n"` counts as `"\n"`, a run of three or more line breaks is one separator, and
//! steps that are empty after trimming are dropped. A line holding only spaces is *not* a
//! separator, as in `str.split("\n\n")`.
//!
//! Offsets are **byte** offsets into the original `&str` (`&text[step.start..step.end] ==
//! step.text`); [`char_spans`] converts them to the character (code point) offsets Python uses.

use rayon::prelude::*;

use crate::error::{Error, Result};

/// How a response is cut into steps.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Delimiter {
    /// Paragraphs separated by runs of two or more line breaks (`"\n"` or `"\r\n"`).
    #[default]
    Paragraphs,
    /// A step starts at each line that begins with a `Step k:` marker (optionally indented and
    /// wrapped in markdown `#`/`*`, case-insensitive); text before the first marker is a step of
    /// its own, so no text is lost.
    Markers,
    /// Split on every occurrence of this literal, non-empty string (e.g. `"<extra_0>"`).
    Custom(String),
}

impl Delimiter {
    /// The name of [`Delimiter::Paragraphs`] (the Python default).
    pub const PARAGRAPHS: &'static str = "\n\n";
    /// The name of [`Delimiter::Markers`].
    pub const MARKERS: &'static str = "markers";

    /// `"\n\n"` is paragraphs, `"markers"` the `Step k:` mode, any other non-empty string a
    /// literal separator. An empty delimiter would split nowhere or everywhere: an error.
    pub fn parse(delimiter: &str) -> Result<Self> {
        match delimiter {
            "" => Err(Error::value(
                "delimiter",
                "expected \"\\n\\n\" (paragraphs), \"markers\" or a non-empty separator, got \"\"",
            )),
            Self::PARAGRAPHS => Ok(Delimiter::Paragraphs),
            Self::MARKERS => Ok(Delimiter::Markers),
            other => Ok(Delimiter::Custom(other.to_string())),
        }
    }
}

/// One step of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step<'a> {
    /// The step's text: never empty, no trailing whitespace, no leading line break.
    pub text: &'a str,
    /// Byte offset of the step's first byte in the original text.
    pub start: usize,
    /// Byte offset one past the step's last byte.
    pub end: usize,
}

/// Cuts `text` into steps, in order. Empty or whitespace-only text has 0 steps; text without a
/// separator is 1 step. Each step has its trailing whitespace (Unicode `White_Space`) and its
/// leading line breaks removed; a step left empty is dropped. Linear time, never fails.
pub fn split_steps<'a>(text: &'a str, delimiter: &Delimiter) -> Vec<Step<'a>> {
    let mut steps = Vec::new();
    match delimiter {
        Delimiter::Paragraphs => paragraphs(text, &mut steps),
        Delimiter::Markers => markers(text, &mut steps),
        Delimiter::Custom(separator) => literal(text, separator, &mut steps),
    }
    steps
}

/// [`split_steps`] of many responses, in parallel; the output is in input order.
pub fn split_steps_batch<'a, S>(texts: &'a [S], delimiter: &Delimiter) -> Vec<Vec<Step<'a>>>
where
    S: AsRef<str> + Sync,
{
    texts
        .par_iter()
        // One response is a few microseconds of work: batch them so scheduling stays negligible.
        .with_min_len(256)
        .map(|text| split_steps(text.as_ref(), delimiter))
        .collect()
}

/// Character (code point) offsets `(start, end)` of `steps`, which must be [`split_steps`] of this
/// `text` (ascending byte offsets): one pass over the text, however many steps.
pub fn char_spans(text: &str, steps: &[Step<'_>]) -> Vec<(usize, usize)> {
    let (mut byte, mut chars) = (0usize, 0usize);
    let mut to_chars = |offset: usize| {
        if offset < byte {
            // Not ascending (steps from elsewhere): count again from the start rather than fail.
            (byte, chars) = (0, 0);
        }
        chars += text.get(byte..offset).map_or(0, |s| s.chars().count());
        byte = offset;
        chars
    };
    steps
        .iter()
        .map(|step| (to_chars(step.start), to_chars(step.end)))
        .collect()
}

/// Pushes `text[start..end]` as a step, without its leading line breaks and trailing whitespace,
/// unless nothing is left. Callers pass char boundaries; `get` keeps a mistake from panicking.
fn push_step<'a>(text: &'a str, start: usize, end: usize, steps: &mut Vec<Step<'a>>) {
    let Some(piece) = text.get(start..end) else {
        return;
    };
    let body = piece.trim_start_matches(['\r', '\n']);
    let start = start + (piece.len() - body.len());
    let body = body.trim_end();
    if !body.is_empty() {
        steps.push(Step {
            text: body,
            start,
            end: start + body.len(),
        });
    }
}

/// Length in bytes of the line break at `at` (`"\n"` or `"\r\n"`), 0 if there is none.
fn line_break(bytes: &[u8], at: usize) -> usize {
    match (bytes.get(at), bytes.get(at + 1)) {
        (Some(b'\n'), _) => 1,
        (Some(b'\r'), Some(b'\n')) => 2,
        _ => 0,
    }
}

fn paragraphs<'a>(text: &'a str, steps: &mut Vec<Step<'a>>) {
    let bytes = text.as_bytes();
    let (mut start, mut at) = (0, 0);
    while at < bytes.len() {
        // The maximal run of line breaks beginning here (usually none).
        let (mut end, mut breaks) = (at, 0);
        loop {
            let len = line_break(bytes, end);
            if len == 0 {
                break;
            }
            end += len;
            breaks += 1;
        }
        if breaks >= 2 {
            push_step(text, start, at, steps);
            start = end;
        }
        // Line breaks are ASCII, so `at` and `end` stay on char boundaries where they matter.
        at = end.max(at + 1);
    }
    push_step(text, start, bytes.len(), steps);
}

fn literal<'a>(text: &'a str, separator: &str, steps: &mut Vec<Step<'a>>) {
    if separator.is_empty() {
        // `Delimiter::parse` rejects "", but the enum can be built directly: one step.
        push_step(text, 0, text.len(), steps);
        return;
    }
    let mut start = 0;
    for (at, _) in text.match_indices(separator) {
        push_step(text, start, at, steps);
        start = at + separator.len();
    }
    push_step(text, start, text.len(), steps);
}

fn markers<'a>(text: &'a str, steps: &mut Vec<Step<'a>>) {
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut line = Some(0);
    while let Some(at) = line {
        let rest = bytes.get(at..).unwrap_or_default();
        if is_marker(rest) {
            // The text since the previous marker (or the preamble) is one step.
            push_step(text, start, at, steps);
            start = at;
        }
        line = rest.iter().position(|&b| b == b'\n').map(|p| at + p + 1);
    }
    push_step(text, start, bytes.len(), steps);
}

/// Whether `line` begins with `Step <digits>:`, after optional spaces and markdown `#`/`*`
/// (`"### Step 2: ..."`, `"**Step 2:** ..."`, `"step 2 :"`).
fn is_marker(line: &[u8]) -> bool {
    let skip = |mut at: usize, allowed: &[u8]| {
        while line.get(at).is_some_and(|b| allowed.contains(b)) {
            at += 1;
        }
        at
    };
    let at = skip(0, b" \t#*");
    if !line
        .get(at..at + 4)
        .is_some_and(|word| word.eq_ignore_ascii_case(b"step"))
    {
        return false;
    }
    let digits = skip(at + 4, b" \t");
    let after = skip(digits, b"0123456789");
    after > digits && line.get(skip(after, b" \t*")) == Some(&b':')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts<'a>(text: &'a str, delimiter: &Delimiter) -> Vec<&'a str> {
        let steps = split_steps(text, delimiter);
        for step in &steps {
            assert_eq!(&text[step.start..step.end], step.text);
        }
        steps.iter().map(|s| s.text).collect()
    }

    fn paras(text: &str) -> Vec<&str> {
        texts(text, &Delimiter::Paragraphs)
    }

    #[test]
    fn paragraphs_split_on_blank_lines() {
        assert_eq!(paras("a\n\nb\n\nc"), ["a", "b", "c"]);
        assert_eq!(paras("a\nstill a\n\nb"), ["a\nstill a", "b"]);
    }

    #[test]
    fn crlf_and_long_runs_are_one_separator() {
        assert_eq!(paras("a\r\n\r\nb"), ["a", "b"]);
        assert_eq!(paras("a\n\r\n\n\n\nb"), ["a", "b"]);
        assert_eq!(paras("a\n\n\n\n\n\nb\r\n\r\n\r\nc"), ["a", "b", "c"]);
        // A lone "\r" is not a line break.
        assert_eq!(paras("a\r\rb"), ["a\r\rb"]);
    }

    #[test]
    fn steps_are_trimmed_and_empty_ones_dropped() {
        assert_eq!(paras("a  \t\n\n  b \n\n \n\n\n\nc\n"), ["a", "  b", "c"]);
        assert_eq!(paras("\n\n\na\n\n"), ["a"]);
        assert_eq!(paras("\na"), ["a"]);
        // A line of spaces is not blank in the ProcessBench convention.
        assert_eq!(paras("a\n  \nb"), ["a\n  \nb"]);
    }

    #[test]
    fn empty_and_whitespace_only_text_has_no_steps() {
        assert!(paras("").is_empty());
        assert!(paras(" \n\n\t\r\n \u{3000}").is_empty());
        assert!(texts("", &Delimiter::Markers).is_empty());
        assert!(texts(" ", &Delimiter::Custom("|".into())).is_empty());
    }

    #[test]
    fn text_without_separator_is_one_step() {
        assert_eq!(paras("just one step."), ["just one step."]);
        assert_eq!(texts("no markers", &Delimiter::Markers), ["no markers"]);
    }

    #[test]
    fn markers_start_steps_at_line_starts() {
        let text = "Plan first.\nStep 1: x = 2\nso y = 4\n  Step 2 : add\n### Step 3: done\n\
                    **Step 4:** check\nnot Step 5: mid-line\nstep 6: lower case\nStep 7 no colon";
        assert_eq!(
            texts(text, &Delimiter::Markers),
            [
                "Plan first.",
                "Step 1: x = 2\nso y = 4",
                "  Step 2 : add",
                "### Step 3: done",
                "**Step 4:** check\nnot Step 5: mid-line",
                "step 6: lower case\nStep 7 no colon",
            ]
        );
        assert_eq!(
            texts("Step 1: a\r\nStep 2: b", &Delimiter::Markers),
            ["Step 1: a", "Step 2: b"]
        );
        assert!(!is_marker(b"Step :"));
        assert!(!is_marker(b"Ste"));
    }

    #[test]
    fn custom_separator_is_literal() {
        let sep = Delimiter::Custom("<extra_0>".into());
        assert_eq!(
            texts("a<extra_0>b<extra_0><extra_0>c<extra_0>", &sep),
            ["a", "b", "c"]
        );
        assert_eq!(
            texts("a\nb\n\nc", &Delimiter::Custom("\n".into())),
            ["a", "b", "c"]
        );
    }

    #[test]
    fn delimiter_names() {
        assert_eq!(Delimiter::parse("\n\n"), Ok(Delimiter::Paragraphs));
        assert_eq!(Delimiter::parse("markers"), Ok(Delimiter::Markers));
        assert_eq!(Delimiter::parse("---"), Ok(Delimiter::Custom("---".into())));
        let err = Delimiter::parse("").unwrap_err().to_string();
        assert!(err.starts_with("delimiter:"), "{err}");
        assert_eq!(texts("a|b", &Delimiter::Custom(String::new())), ["a|b"]);
    }

    #[test]
    fn char_spans_count_code_points() {
        let text = "é😀 x\n\n日本\n\nz";
        let steps = split_steps(text, &Delimiter::Paragraphs);
        assert_eq!(char_spans(text, &steps), [(0, 4), (6, 8), (10, 11)]);
        let chars: Vec<char> = text.chars().collect();
        let second: String = chars[6..8].iter().collect();
        assert_eq!(second, "日本");
        // Offsets out of order still give the right answer.
        let reversed: Vec<Step> = steps.iter().rev().copied().collect();
        assert_eq!(char_spans(text, &reversed), [(10, 11), (6, 8), (0, 4)]);
    }

    #[test]
    fn batch_matches_single() {
        let texts = ["a\n\nb", "", "c", "d\n\n\ne\n\nf"];
        let batch = split_steps_batch(&texts, &Delimiter::Paragraphs);
        for (text, steps) in texts.iter().zip(&batch) {
            assert_eq!(steps, &split_steps(text, &Delimiter::Paragraphs));
        }
    }
}
