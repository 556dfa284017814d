"""SGPO's options as verl carries them: ``algorithm.sgpo.*`` in the Hydra config (added with a
leading ``+``), read from an OmegaConf ``DictConfig``, verl's ``AlgoConfig`` dataclass or a dict."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MODES = ("all_negative", "all_incorrect")


def _get(config: Any, key: str, default: Any = None) -> Any:
    if config is None:
        return default
    if isinstance(config, dict):
        return config.get(key, default)
    getter = getattr(config, "get", None)
    if callable(getter):  # DictConfig, and verl's BaseConfig dataclasses
        try:
            return getter(key, default)
        except Exception:  # a dataclass without the key
            pass
    return getattr(config, key, default)


def norm_by_std(config: Any, default: bool = True) -> bool:
    """``algorithm.norm_adv_by_std_in_grpo`` (verl's default True)."""
    value = _get(config, "norm_adv_by_std_in_grpo", default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise TypeError(f"algorithm.norm_adv_by_std_in_grpo: expected true or false, got {value!r}")
    return value


def check_no_group_filtering(config: Any) -> None:
    """DAPO's dynamic sampling drops groups whose scores have zero spread: exactly the all-wrong
    groups SGPO exists to use. Refuse the combination rather than train plain DAPO silently."""
    filter_groups = _get(config, "filter_groups")
    if filter_groups is not None and bool(_get(filter_groups, "enable", False)):
        raise ValueError(
            "algorithm.filter_groups.enable: SGPO needs the all-negative groups that DAPO group "
            "filtering drops before the advantage step; set algorithm.filter_groups.enable=False"
        )


@dataclass(frozen=True)
class SGPOOptions:
    """The SGPO rule's options (see :func:`sgpo_rs.sgpo_rewards`)."""

    credit_scale: float = 0.5
    mode: str = "all_negative"

    def __post_init__(self) -> None:
        if isinstance(self.credit_scale, bool) or not isinstance(self.credit_scale, (int, float)):
            raise TypeError(f"credit_scale: expected a real number, got {type(self.credit_scale).__name__}")
        if not (self.credit_scale >= 0 and self.credit_scale < float("inf")):
            raise ValueError(f"credit_scale: expected a finite value >= 0, got {self.credit_scale}")
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")

    @classmethod
    def from_config(cls, config: Any, **defaults: Any) -> SGPOOptions:
        """``algorithm.sgpo.{credit_scale,mode}`` over ``defaults``; also refuses group filtering."""
        check_no_group_filtering(config)
        sgpo = _get(config, "sgpo")
        values = dict(defaults)
        for key in ("credit_scale", "mode"):
            value = _get(sgpo, key)
            if value is not None:
                values[key] = float(value) if key == "credit_scale" and isinstance(value, int) else value
        return cls(**values)
