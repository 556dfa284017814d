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
) -> Tuple[
    npt.NDArray[np.float32],
    npt.NDArray[np.float32],
    npt.NDArray[np.bool_],
    npt.NDArray[np.bool_],
    Dict[str, Any],
]: ...
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
    beta: float,
    epsilon_low: float,
    epsilon_high: Optional[float],
    delta: Optional[float],
    loss_type: str,
    importance_sampling_level: str,
    kl_estimator: str,
    kl_bias_correction: bool,
    max_completion_length: Optional[int],
    num_items: Optional[float],
    grad_scale: float,
    loss_agg_mode: Optional[str],
    loss_scale_factor: Optional[float],
    clip_ratio_c: float,
    sapo_temperature_pos: float,
    sapo_temperature_neg: float,
    vespo_k_pos: float,
    vespo_lambda_pos: float,
    vespo_k_neg: float,
    vespo_lambda_neg: float,
) -> Tuple[float, npt.NDArray[np.float32], Dict[str, float]]: ...
def selective_logprobs_core(
    logits: npt.NDArray[Any],
    targets: npt.NDArray[np.int64],
    *,
    half_dtype: str,
    temperature: float,
    entropy: bool,
) -> Tuple[npt.NDArray[np.float32], Optional[npt.NDArray[np.float32]]]: ...
def selective_logprobs_backward_core(
    logits: npt.NDArray[Any],
    targets: npt.NDArray[np.int64],
    grad_logp: npt.NDArray[np.float32],
    grad_entropy: Optional[npt.NDArray[np.float32]],
    *,
    half_dtype: str,
    temperature: float,
) -> npt.NDArray[np.float32]: ...
def split_steps(text: str, delimiter: str) -> List[str]: ...
def step_spans(text: str, delimiter: str) -> List[Tuple[int, int]]: ...
def split_steps_batch(texts: Sequence[str], delimiter: str) -> List[List[str]]: ...
def parse_verdict(judge_text: str, num_steps: Optional[int] = None) -> Optional[int]: ...
def parse_verdict_batch(
    judge_texts: Sequence[str], num_steps: Optional[Sequence[int]] = None
) -> List[Optional[int]]: ...
def first_error_from_scores(scores: npt.NDArray[np.float64], threshold: float) -> int: ...
