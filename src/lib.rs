//! sgpo-rs: SGPO (Stepwise Guided Policy Optimization) reward diversification, group-normalised
//! advantages and the GRPO-family policy loss, as a plain Rust engine.
//!
//! The engine has no Python types; `src/python/` (feature `python`) only translates arrays and
//! errors for the `sgpo_rs` Python package.

pub mod advantages;
pub mod credit_rule;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod elem;
pub mod error;
pub mod groups;
pub mod logprob;
pub mod loss;
pub mod numeric;
pub mod outcome;
pub mod rewards;
pub mod rows;
pub mod text;

pub use error::{Error, Result};

#[cfg(feature = "python")]
mod python;
