"""SGPO's options as verl carries them: ``algorithm.sgpo.*`` in the Hydra config (added with a
leading ``+``), read from an OmegaConf ``DictConfig``, verl's ``AlgoConfig`` dataclass or a dict."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..credit import UNITS, CreditOptions

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
    """The SGPO rule's options (see :func:`sgpo_rs.sgpo_rewards` and :mod:`sgpo_rs.credit`):
    ``credit_scale``, ``rule``, ``beta``, ``gamma`` (None: the default, or the preset's),
    ``preset``, ``mode`` and ``credit_unit`` (``"steps"``, or ``"length"``: the reward function's
    ``sgpo_score``). After construction the credit fields hold the resolved values."""

    credit_scale: Optional[float] = None
    mode: str = "all_negative"
    rule: Optional[str] = None
    beta: Optional[float] = None
    gamma: Optional[float] = None
    preset: Optional[str] = None
    credit_unit: str = "steps"

    def __post_init__(self) -> None:
        if self.credit_unit not in UNITS:
            raise ValueError(f"credit_unit: expected one of {UNITS}, got {self.credit_unit!r}")
        credit = CreditOptions.resolve(
            self.preset, credit_scale=self.credit_scale, rule=self.rule, beta=self.beta, gamma=self.gamma
        )
        for name in ("credit_scale", "rule", "beta", "gamma"):
            object.__setattr__(self, name, getattr(credit, name))
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {self.mode!r}")

    @property
    def credit(self) -> CreditOptions:
        return CreditOptions(self.credit_scale, self.rule, self.beta, self.gamma)

    @classmethod
    def from_config(cls, config: Any, **defaults: Any) -> SGPOOptions:
        """``algorithm.sgpo.{credit_scale,mode,rule,beta,gamma,preset,credit_unit}`` over ``defaults``; also
        refuses group filtering."""
        check_no_group_filtering(config)
        sgpo = _get(config, "sgpo")
        values = dict(defaults)
        for key in ("credit_scale", "mode", "rule", "beta", "gamma", "preset", "credit_unit"):
            value = _get(sgpo, key)
            if value is not None:
                values[key] = value
        return cls(**values)
