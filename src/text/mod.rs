//! Text kernels of the step-wise judge: cutting a response into the steps a judge or PRM scores,
//! and turning the judge's answer (or a PRM's step scores) into a `first_error` verdict.
//!
//! Both ends follow the ProcessBench convention (docs/formulas.md, section 5): steps are
//! paragraphs indexed from 0, and the verdict is the integer in the critic's last `\boxed{}`,
//! `-1` meaning "no wrong step". Anything that is not clearly such an integer is "no verdict";
//! the parser never guesses, because a guessed verdict becomes a reward.

pub mod steps;
pub mod verdict;

pub use steps::{char_spans, split_steps, split_steps_batch, Delimiter, Step};
pub use verdict::{first_error_from_scores, parse_verdict, parse_verdicts};
