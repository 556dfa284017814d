//! Host side of `kernels/groups.cu`: SGPO rewards, group advantages and the token broadcast on
//! device pointers.

use super::args::Arg;
use super::device::{launch, Shape, Stream};
use super::source::GROUPS;
use super::tensor::{status_buffer, DeviceTensor};
use super::MaskDtype;
use crate::advantages::{token_shape, AdvantageOptions, Scale, Singleton};
use crate::error::{Error, Result};
use crate::rewards::{DiversifyMode, RewardOptions};

const BLOCK: u32 = 256;
/// float64 stats per group (`GROUP_STATS`).
const GROUP_STATS: usize = 5;
/// float64 elements of the rewards' `stats` output: all-negative, diversified and judge-missing
/// groups, credit sum, credited rows.
pub const REWARD_STATS_LEN: usize = 5;

/// The groups of a batch on the device: contiguous (`group_size > 0`), or CSR (`order`: the rows
/// group by group, int64; `starts`: `num_groups + 1` int64 offsets into `order`).
#[derive(Debug, Clone, Copy)]
struct DeviceGroups {
    rows: usize,
    num_groups: usize,
    group_size: usize,
    order: u64,
    starts: u64,
}

impl DeviceGroups {
    /// The kernels' `Groups` struct. The layout was checked when it was built
    /// ([`GroupTensors::checked`]: the CPU path's group-size rule, or the CSR buffers' sizes).
    fn arg(&self) -> Arg {
        let mut bytes = Vec::with_capacity(32);
        bytes.extend_from_slice(&(self.num_groups as i64).to_le_bytes());
        bytes.extend_from_slice(&(self.group_size as i64).to_le_bytes());
        bytes.extend_from_slice(&self.order.to_le_bytes());
        bytes.extend_from_slice(&self.starts.to_le_bytes());
        Arg::Struct(bytes)
    }

    fn per_group(&self) -> Result<Shape> {
        let blocks = self.num_groups.div_ceil(BLOCK as usize).max(1);
        let blocks = u32::try_from(blocks)
            .ok()
            .filter(|&b| b <= i32::MAX as u32)
            .ok_or_else(|| {
                Error::value(
                    "group_ids",
                    format!("expected fewer groups, got {}", self.num_groups),
                )
            })?;
        Ok(Shape {
            grid: (blocks, 1, 1),
            block: BLOCK,
            shared_bytes: 0,
        })
    }
}

fn single() -> Shape {
    Shape {
        grid: (1, 1, 1),
        block: BLOCK,
        shared_bytes: 0,
    }
}

/// Verdicts on the device: int64 `first_error` and `num_steps`, or a float64 `credit` (NaN = not
/// judged).
#[derive(Debug, Clone, Copy)]
enum DeviceVerdicts {
    Steps { first_error: u64, num_steps: u64 },
    Credit(u64),
}

/// Outputs of [`sgpo_rewards`]: float32 rewards and credit, uint8 flags per row, float64
/// `stats` ([`REWARD_STATS_LEN`]), a float64 scratch of `5 * num_groups`, and the status.
#[derive(Debug, Clone, Copy)]
struct DeviceRewardOutputs {
    rewards: u64,
    credit: u64,
    all_negative: u64,
    diversified: u64,
    stats: u64,
    scratch: u64,
    status: u64,
}

/// float64 elements of [`DeviceRewardOutputs::scratch`].
pub fn reward_scratch_len(num_groups: usize) -> usize {
    num_groups.max(1) * GROUP_STATS
}

/// The SGPO reward rule (`crate::rewards::sgpo_rewards`) on float64 rewards; `correct` is a
/// uint8 array or 0 (then `reward > 0`).
fn launch_rewards(
    stream: &Stream,
    groups: &DeviceGroups,
    rewards: u64,
    verdicts: DeviceVerdicts,
    correct: u64,
    options: RewardOptions,
    out: &DeviceRewardOutputs,
) -> Result<()> {
    if !options.credit_scale.is_finite() || options.credit_scale < 0.0 {
        return Err(Error::value(
            "credit_scale",
            format!("expected a finite value >= 0, got {}", options.credit_scale),
        ));
    }
    let groups_arg = groups.arg();
    if groups.rows == 0 {
        return Ok(());
    }
    let (first_error, num_steps, credit) = match verdicts {
        DeviceVerdicts::Steps {
            first_error,
            num_steps,
        } => (first_error, num_steps, 0),
        DeviceVerdicts::Credit(c) => (0, 0, c),
    };
    options.rule.validate()?;
    let (rule, beta, gamma) = options.rule.code();
    let mode = match options.mode {
        DiversifyMode::AllNegative => 0,
        DiversifyMode::AllIncorrect => 1,
    };
    launch(
        stream,
        &GROUPS,
        "sgpo_rewards_groups",
        groups.per_group()?,
        &[
            groups_arg,
            Arg::Ptr(rewards),
            Arg::Ptr(first_error),
            Arg::Ptr(num_steps),
            Arg::Ptr(credit),
            Arg::Ptr(correct),
            Arg::F64(options.credit_scale),
            Arg::I32(mode),
            Arg::I32(rule),
            Arg::F64(beta),
            Arg::F64(gamma),
            Arg::Ptr(out.rewards),
            Arg::Ptr(out.credit),
            Arg::Ptr(out.all_negative),
            Arg::Ptr(out.diversified),
            Arg::Ptr(out.scratch),
            Arg::Ptr(out.status),
        ],
    )?;
    launch(
        stream,
        &GROUPS,
        "sgpo_rewards_stats",
        single(),
        &[
            Arg::I64(groups.num_groups as i64),
            Arg::Ptr(out.scratch),
            Arg::Ptr(out.stats),
        ],
    )
}

/// Group-normalised advantages (`crate::advantages::group_advantages`) of float64 rewards into
/// float32 `out`; `scratch` is one float64 (the batch standard deviation).
#[allow(clippy::too_many_arguments)]
fn launch_group_advantages(
    stream: &Stream,
    groups: &DeviceGroups,
    rewards: u64,
    options: AdvantageOptions,
    out: u64,
    scratch: u64,
    status: u64,
) -> Result<()> {
    if !options.eps.is_finite() || options.eps < 0.0 {
        return Err(Error::value(
            "eps",
            format!("expected a finite value >= 0, got {}", options.eps),
        ));
    }
    let groups_arg = groups.arg();
    if groups.rows == 0 {
        return Ok(());
    }
    let scale = match options.scale {
        Scale::Group => 0,
        Scale::Batch => 1,
        Scale::None => 2,
    };
    if options.scale == Scale::Batch {
        launch(
            stream,
            &GROUPS,
            "batch_std",
            single(),
            &[
                Arg::Ptr(rewards),
                Arg::I64(groups.rows as i64),
                Arg::Ptr(scratch),
            ],
        )?;
    }
    launch(
        stream,
        &GROUPS,
        "group_advantages",
        groups.per_group()?,
        &[
            groups_arg,
            Arg::Ptr(rewards),
            Arg::I32(scale),
            Arg::F64(options.eps),
            Arg::I32(i32::from(options.singleton == Singleton::Unit)),
            Arg::Ptr(scratch),
            Arg::Ptr(out),
            Arg::Ptr(status),
        ],
    )
}

/// Tokens per `token_advantages` block (`TOKEN_CHUNK`: 256 threads, four steps of four).
const TOKEN_CHUNK: usize = 4096;

/// `out[i, t] = advantages[i] * mask[i, t]` (float32 `(rows, len)`).
#[allow(clippy::too_many_arguments)]
fn launch_token_advantages(
    stream: &Stream,
    advantages: u64,
    mask: u64,
    mask_dtype: MaskDtype,
    rows: usize,
    len: usize,
    out: u64,
    status: u64,
) -> Result<()> {
    if rows == 0 || len == 0 {
        return Ok(());
    }
    // One block per (row, chunk of TOKEN_CHUNK tokens); the head a row may have before its first
    // 16-byte boundary is left out of the chunks, so they cover `len` tokens.
    let chunks = len.div_ceil(TOKEN_CHUNK);
    let blocks = rows
        .checked_mul(chunks)
        .filter(|&b| b <= i32::MAX as usize)
        .ok_or_else(|| {
            Error::shape(
                "mask",
                "(N, L) with N * ceil(L / 1024) < 2^31",
                format!("({rows}, {len})"),
            )
        })?;
    // 16-byte stores need `out` on a 16-byte boundary and the mask co-aligned with it (its
    // element k at a 4-element boundary when out's is), which every fresh torch tensor is.
    let mask_align = match mask_dtype {
        MaskDtype::U8 => 4,
        MaskDtype::F32 => 16,
    };
    let vec = out.is_multiple_of(16) && mask.is_multiple_of(mask_align);
    launch(
        stream,
        &GROUPS,
        &format!("token_advantages_{}", mask_dtype.suffix()),
        Shape {
            grid: (blocks as u32, 1, 1),
            block: BLOCK,
            shared_bytes: 0,
        },
        &[
            Arg::Ptr(advantages),
            Arg::Ptr(mask),
            Arg::I64(rows as i64),
            Arg::I64(len as i64),
            Arg::I64(chunks as i64),
            Arg::I32(i32::from(vec)),
            Arg::Ptr(out),
            Arg::Ptr(status),
        ],
    )
}

/// How the caller groups the rows: `group_size` consecutive rows, or by ids as CSR tensors
/// (`order`: int64 `(N,)`, the rows group by group; `starts`: int64 `(G + 1,)` offsets).
#[derive(Debug, Clone, Copy)]
pub enum GroupTensors<'a> {
    Consecutive(usize),
    Ids {
        order: &'a DeviceTensor,
        starts: &'a DeviceTensor,
    },
}

impl GroupTensors<'_> {
    fn checked(&self, rows: usize, device: &str) -> Result<DeviceGroups> {
        match *self {
            GroupTensors::Consecutive(size) => {
                // The CPU path's checks and messages (a positive divisor of the row count).
                crate::groups::Groups::contiguous(rows, size)?;
                Ok(DeviceGroups {
                    rows,
                    num_groups: rows / size,
                    group_size: size,
                    order: 0,
                    starts: 0,
                })
            }
            GroupTensors::Ids { order, starts } => {
                let order_ptr = order.expect_buffer("group_ids", "int64", &[rows], device)?;
                let num_groups = starts.numel().saturating_sub(1);
                let starts_ptr =
                    starts.expect_buffer("group_ids", "int64", &[num_groups + 1], device)?;
                Ok(DeviceGroups {
                    rows,
                    num_groups,
                    group_size: 0,
                    order: order_ptr,
                    starts: starts_ptr,
                })
            }
        }
    }
}

/// The reward rule's tensors as the caller describes them: float64 `rewards`, the verdicts
/// (int64 `first_error` and `num_steps`, or float64 `credit`), optional uint8 `correct`, and
/// the outputs and scratch it allocated.
#[derive(Debug, Clone, Copy)]
pub struct RewardTensors<'a> {
    pub rewards: &'a DeviceTensor,
    pub first_error: Option<&'a DeviceTensor>,
    pub num_steps: Option<&'a DeviceTensor>,
    pub credit: Option<&'a DeviceTensor>,
    pub correct: Option<&'a DeviceTensor>,
    pub out_rewards: &'a DeviceTensor,
    pub out_credit: &'a DeviceTensor,
    pub all_negative: &'a DeviceTensor,
    pub diversified: &'a DeviceTensor,
    pub stats: &'a DeviceTensor,
    pub scratch: &'a DeviceTensor,
    pub status: &'a DeviceTensor,
}

/// Checks every tensor, then launches the SGPO reward rule.
pub fn sgpo_rewards(
    stream_handle: u64,
    groups: GroupTensors<'_>,
    t: &RewardTensors<'_>,
    options: RewardOptions,
) -> Result<()> {
    let device = t.rewards.device.as_str();
    let rows = t.rewards.numel();
    let rewards = t
        .rewards
        .expect_rows("rewards", "float64", rows, device, "rewards")?;
    let optional = |arg, c: Option<&DeviceTensor>, dtype| {
        c.map(|c| c.expect_rows(arg, dtype, rows, device, "rewards"))
            .transpose()
    };
    let verdicts = match (
        optional("credit", t.credit, "float64")?,
        optional("first_error", t.first_error, "int64")?,
        optional("num_steps", t.num_steps, "int64")?,
    ) {
        (Some(credit), _, _) => DeviceVerdicts::Credit(credit),
        (None, Some(first_error), Some(num_steps)) => DeviceVerdicts::Steps {
            first_error,
            num_steps,
        },
        _ => {
            return Err(Error::value(
                "first_error",
                "expected first_error and num_steps, or credit",
            ))
        }
    };
    let correct = optional("correct", t.correct, "uint8")?.unwrap_or(0);
    let groups = groups.checked(rows, device)?;
    let buffer = |arg, b: &DeviceTensor, dtype, len| b.expect_buffer(arg, dtype, &[len], device);
    let out = DeviceRewardOutputs {
        rewards: buffer("out_rewards", t.out_rewards, "float32", rows)?,
        credit: buffer("out_credit", t.out_credit, "float32", rows)?,
        all_negative: buffer("all_negative", t.all_negative, "uint8", rows)?,
        diversified: buffer("diversified", t.diversified, "uint8", rows)?,
        stats: buffer("stats", t.stats, "float64", REWARD_STATS_LEN)?,
        scratch: buffer(
            "scratch",
            t.scratch,
            "float64",
            reward_scratch_len(groups.num_groups),
        )?,
        status: status_buffer(t.status, device)?,
    };
    let stream = t.rewards.stream("rewards", stream_handle)?;
    launch_rewards(&stream, &groups, rewards, verdicts, correct, options, &out)
}

/// Checks every tensor, then launches the group-normalised advantages of float64 `rewards`
/// into float32 `out` (`scratch`: one float64).
pub fn group_advantages(
    stream_handle: u64,
    groups: GroupTensors<'_>,
    rewards: &DeviceTensor,
    options: AdvantageOptions,
    out: &DeviceTensor,
    scratch: &DeviceTensor,
    status: &DeviceTensor,
) -> Result<()> {
    let device = rewards.device.as_str();
    let rows = rewards.numel();
    let rewards_ptr = rewards.expect_rows("rewards", "float64", rows, device, "rewards")?;
    let groups = groups.checked(rows, device)?;
    let out = out.expect_buffer("out", "float32", &[rows], device)?;
    let scratch = scratch.expect_buffer("scratch", "float64", &[1], device)?;
    let status = status_buffer(status, device)?;
    let stream = rewards.stream("rewards", stream_handle)?;
    launch_group_advantages(&stream, &groups, rewards_ptr, options, out, scratch, status)
}

/// Checks every tensor (the mask's shape by the CPU path's rule), then launches
/// `out[i, t] = advantages[i] * mask[i, t]`.
pub fn token_advantages(
    stream_handle: u64,
    advantages: &DeviceTensor,
    mask: &DeviceTensor,
    out: &DeviceTensor,
    status: &DeviceTensor,
) -> Result<()> {
    let (rows, len) = token_shape(&advantages.shape, &mask.shape)?;
    let device = advantages.device.as_str();
    let adv = advantages.expect_rows("advantages", "float32", rows, device, "advantages")?;
    let mask_dtype = MaskDtype::parse(&mask.dtype)?;
    let mask_ptr = mask.expect_dense("mask", device, "advantages")?;
    let out = out.expect_buffer("out", "float32", &[rows, len], device)?;
    let status = status_buffer(status, device)?;
    let stream = advantages.stream("advantages", stream_handle)?;
    launch_token_advantages(&stream, adv, mask_ptr, mask_dtype, rows, len, out, status)
}
