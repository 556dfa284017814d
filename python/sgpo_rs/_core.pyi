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
    out: Optional[npt.NDArray[Any]] = None,
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
# `cuda_built`). Every tensor is passed as a `Tensor` description, which the core checks (device,
# dtype, shape, layout, the size of every buffer) before it launches anything; `stream_handle` is
# a CUstream (`torch.cuda.current_stream().cuda_stream`). Launches are asynchronous and errors in
# the inputs land in the 16-byte status buffer (`sgpo_rs._cuda` reads it).
cuda_built: bool
Tensor = Tuple[int, str, Tuple[int, ...], Tuple[int, ...], str]
"""(data_ptr, dtype without "torch.", shape, strides in elements, str(device))"""
Groups = Tuple[Optional[int], Optional[Tuple[Tensor, Tensor]]]
"""(group_size, None) for consecutive groups, or (None, (order, starts)) built from group ids"""

def cuda_availability() -> Dict[str, Any]: ...
def cuda_device(ordinal: int) -> Tuple[str, int]: ...
def cuda_compile_all(arch: int, *, verbose: bool = False) -> List[Tuple[str, int, str]]: ...
def cuda_selective_logprobs(
    stream_handle: int,
    logits: Tensor,
    targets: Tensor,
    temperature: float,
    logp: Tensor,
    entropy: Optional[Tensor],
    status: Tensor,
    stats: Optional[Tensor] = None,
) -> None: ...
def cuda_selective_logprobs_backward(
    stream_handle: int,
    logits: Tensor,
    targets: Tensor,
    temperature: float,
    grad_logp: Tensor,
    grad_entropy: Optional[Tensor],
    dlogits: Tensor,
    status: Tensor,
    stats: Optional[Tensor] = None,
) -> None: ...
def cuda_loss_workspace_len(batch: int, len: int) -> int: ...
def cuda_policy_loss(
    stream_handle: int,
    logp: Tensor,
    old_logp: Optional[Tensor],
    ref_logp: Optional[Tensor],
    advantages: Tensor,
    mask: Tensor,
    options: Dict[str, Any],
    grad: Tensor,
    workspace: Tensor,
    out: Tensor,
    status: Tensor,
) -> List[Tuple[str, int]]: ...
def cuda_reward_scratch_len(num_groups: int) -> int: ...
def cuda_sgpo_rewards(
    stream_handle: int,
    groups: Groups,
    rewards: Tensor,
    first_error: Optional[Tensor],
    num_steps: Optional[Tensor],
    credit: Optional[Tensor],
    correct: Optional[Tensor],
    credit_scale: float,
    mode: str,
    out_rewards: Tensor,
    out_credit: Tensor,
    out_all_negative: Tensor,
    out_diversified: Tensor,
    out_stats: Tensor,
    scratch: Tensor,
    status: Tensor,
    rule: str = "prefix",
    beta: float = 5.0,
    gamma: float = 0.5,
) -> None: ...
def cuda_group_advantages(
    stream_handle: int,
    groups: Groups,
    rewards: Tensor,
    scale: str,
    eps: float,
    singleton: str,
    out: Tensor,
    scratch: Tensor,
    status: Tensor,
) -> None: ...
def cuda_token_advantages(
    stream_handle: int, advantages: Tensor, mask: Tensor, out: Tensor, status: Tensor
) -> None: ...
