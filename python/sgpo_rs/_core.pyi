"""Type stubs of the Rust extension module. Call the documented wrappers in `sgpo_rs` instead:
these functions expect arrays already normalised (contiguous, exact dtypes)."""

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

__version__: str

def sgpo_rewards_core(
    rewards: npt.NDArray[np.float64],
    first_error: Optional[npt.NDArray[np.int64]],
    num_steps: Optional[npt.NDArray[np.int64]],
    credit: Optional[npt.NDArray[np.float64]],
    correct: Optional[npt.NDArray[np.bool_]],
    group_size: Optional[int],
    group_ids: Optional[npt.NDArray[np.int64]],
    credit_scale: float,
    mode: str,
    rule: str = "prefix",
    beta: float = 5.0,
    gamma: float = 0.5,
) -> Tuple[
    npt.NDArray[np.float32],
    npt.NDArray[np.float32],
    npt.NDArray[np.bool_],
    npt.NDArray[np.bool_],
    Dict[str, Any],
]: ...
def credit_rule_apply(
    scores: npt.NDArray[np.float64], rule: str, beta: float, gamma: float
) -> npt.NDArray[np.float64]: ...
def group_advantages_core(
    rewards: npt.NDArray[np.float64],
    group_size: Optional[int],
    group_ids: Optional[npt.NDArray[np.int64]],
    scale: str,
    eps: float,
    singleton: str,
) -> npt.NDArray[np.float32]: ...
def token_advantages_core(
    advantages: npt.NDArray[np.float32],
    mask: npt.NDArray[Any],
    out: Optional[npt.NDArray[np.float32]] = None,
) -> npt.NDArray[np.float32]: ...
def policy_loss_core(
    logp: npt.NDArray[Any],
    old_logp: Optional[npt.NDArray[Any]],
    ref_logp: Optional[npt.NDArray[Any]],
    advantages: npt.NDArray[np.float32],
    mask: npt.NDArray[Any],
    *,
    half_dtype: str,
    options: Dict[str, Any],
) -> Tuple[float, npt.NDArray[np.float32], Dict[str, float]]: ...
def loss_option_defaults() -> Dict[str, Any]: ...
def loss_types() -> List[Dict[str, Any]]: ...
def selective_logprobs_core(
    logits: npt.NDArray[Any],
    targets: npt.NDArray[np.int64],
    *,
    half_dtype: str,
    temperature: float,
    entropy: bool,
    stats: bool = False,
) -> Tuple[Any, ...]: ...
def selective_logprobs_backward_core(
    logits: npt.NDArray[Any],
    targets: npt.NDArray[np.int64],
    grad_logp: npt.NDArray[np.float32],
    grad_entropy: Optional[npt.NDArray[np.float32]],
    *,
    half_dtype: str,
    temperature: float,
    out_dtype: str = "float32",
    stats: Optional[npt.NDArray[np.float64]] = None,
) -> npt.NDArray[Any]: ...
def split_steps(text: str, delimiter: str) -> List[str]: ...
def step_spans(text: str, delimiter: str) -> List[Tuple[int, int]]: ...
def split_steps_batch(texts: Sequence[str], delimiter: str) -> List[List[str]]: ...
def parse_verdict(judge_text: str, num_steps: Optional[int] = None) -> Optional[int]: ...
def parse_verdict_batch(
    judge_texts: Sequence[str], num_steps: Optional[Sequence[int]] = None
) -> List[Optional[int]]: ...
def first_error_from_scores(scores: npt.NDArray[np.float64], threshold: float) -> int: ...

# SIMD level of the CPU kernels ("avx512", "avx2" or "portable"): the one in use, the CPU's best,
# and a setter for tests and benchmarks (None: the CPU's best; capped at it; returns the level).
def simd_level() -> str: ...
def cpu_simd_level() -> str: ...
def set_simd_level(level: Optional[str] = None) -> str: ...

# The CUDA path (present when the extension was built with the `cuda` feature; see
# `cuda_built`). Pointers are `tensor.data_ptr()` values, `stream_handle` a CUstream
# (`torch.cuda.current_stream().cuda_stream`); launches are asynchronous and errors in the
# inputs land in the 16-byte status buffer (`sgpo_rs._cuda` reads it).
cuda_built: bool
LogitsLayout = Tuple[int, str, int, int, int, int, int]
"""(data_ptr, dtype, rows, vocab, row_stride, group_rows, group_stride)"""

def cuda_availability() -> Dict[str, Any]: ...
def cuda_status_bits() -> Dict[str, int]: ...
def cuda_device(ordinal: int) -> Tuple[str, int]: ...
def cuda_compile_all(arch: int, *, verbose: bool = False) -> List[Tuple[str, int, str]]: ...
def cuda_selective_logprobs(
    device: int,
    stream_handle: int,
    logits: LogitsLayout,
    targets: int,
    temperature: float,
    logp: int,
    entropy: Optional[int],
    status: int,
    stats: Optional[int] = None,
) -> None: ...
def cuda_selective_logprobs_backward(
    device: int,
    stream_handle: int,
    logits: LogitsLayout,
    targets: int,
    temperature: float,
    grad_logp: int,
    grad_entropy: Optional[int],
    dlogits: int,
    out_stride: int,
    status: int,
    stats: Optional[int] = None,
) -> None: ...
def cuda_loss_workspace_len(batch: int, len: int) -> int: ...
def cuda_policy_loss(
    device: int,
    stream_handle: int,
    logp: int,
    old_logp: int,
    ref_logp: int,
    advantages: int,
    advantages_per_token: bool,
    mask: int,
    dtype: str,
    mask_dtype: str,
    batch: int,
    len: int,
    options: Dict[str, Any],
    grad: int,
    workspace: int,
    out: int,
    status: int,
) -> List[Tuple[str, int]]: ...
def cuda_reward_scratch_len(num_groups: int) -> int: ...
def cuda_sgpo_rewards(
    device: int,
    stream_handle: int,
    rows: int,
    num_groups: int,
    group_size: int,
    order: int,
    starts: int,
    rewards: int,
    first_error: int,
    num_steps: int,
    credit: int,
    correct: int,
    credit_scale: float,
    mode: str,
    out_rewards: int,
    out_credit: int,
    out_all_negative: int,
    out_diversified: int,
    out_stats: int,
    scratch: int,
    status: int,
    rule: str = "prefix",
    beta: float = 5.0,
    gamma: float = 0.5,
) -> None: ...
def cuda_group_advantages(
    device: int,
    stream_handle: int,
    rows: int,
    num_groups: int,
    group_size: int,
    order: int,
    starts: int,
    rewards: int,
    scale: str,
    eps: float,
    singleton: str,
    out: int,
    scratch: int,
    status: int,
) -> None: ...
def cuda_token_advantages(
    device: int,
    stream_handle: int,
    advantages: int,
    mask: int,
    mask_dtype: str,
    rows: int,
    len: int,
    out: int,
    status: int,
) -> None: ...
