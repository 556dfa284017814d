"""The glue that hands reward extra info to the ``sgpo`` estimator, for both of verl's trainers,
without forking verl.

- Legacy trainer (``trainer.use_v1=False``): ``RayPPOTrainer.fit`` stores the reward extra info in
  ``batch.non_tensor_batch`` and then calls the module function ``ray_trainer.compute_advantage``,
  looked up at call time. We wrap that function: for ``adv_estimator=sgpo`` it makes the batch's
  ``sgpo_*`` columns pending for the call; the estimator's metrics ride in ``batch.meta_info`` to
  a wrapped ``compute_data_metrics``, which adds them to the step's metrics.
- v1 trainer (verl 0.9's default): the advantage step reads only a few fields from its
  TransferQueue. We register ``trainer.v1.trainer_mode=sgpo_sync``, the synchronous trainer whose
  ``_compute_advantage`` also reads each sample's ``reward_extra_info`` and logs the metrics.

Both hooks install when verl's module is imported (an import hook), so the order in which verl and
this package load does not matter."""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import sys
from typing import Any, Callable, Dict

from . import verdicts
from .estimators import SGPO
from .options import check_no_group_filtering
from .sessions import wrap_multi_trajectories

METRICS_KEY = "sgpo_metrics"
V1_TRAINER = "sgpo_sync"
_MARK = "_sgpo_rs_wrapped"


def _is_sgpo(adv_estimator: Any) -> bool:
    return str(getattr(adv_estimator, "value", adv_estimator)) == SGPO


def wrap_compute_advantage(original: Callable[..., Any]) -> Callable[..., Any]:
    """verl's ``compute_advantage(data, adv_estimator, ...)`` with the batch's verdicts pending."""
    if getattr(original, _MARK, False):
        return original

    @functools.wraps(original)
    def compute_advantage(data: Any, adv_estimator: Any, *args: Any, **kwargs: Any) -> Any:
        if not _is_sgpo(adv_estimator):
            return original(data, adv_estimator, *args, **kwargs)
        check_no_group_filtering(kwargs.get("config"))
        batch_verdicts = verdicts.current() or verdicts.PendingVerdicts.from_columns(data.non_tensor_batch)
        with verdicts.pending(batch_verdicts):
            result = original(data, adv_estimator, *args, **kwargs)
        if batch_verdicts is not None:
            result.meta_info[METRICS_KEY] = dict(batch_verdicts.metrics)
        return result

    setattr(compute_advantage, _MARK, True)
    return compute_advantage


def wrap_compute_data_metrics(original: Callable[..., Dict[str, Any]]) -> Callable[..., Dict[str, Any]]:
    """verl's ``compute_data_metrics(batch, use_critic)`` plus the ``sgpo/*`` metrics of the batch."""
    if getattr(original, _MARK, False):
        return original

    @functools.wraps(original)
    def compute_data_metrics(*args: Any, **kwargs: Any) -> Dict[str, Any]:
        metrics = original(*args, **kwargs)
        batch = kwargs.get("batch", args[0] if args else None)
        extra = getattr(batch, "meta_info", {}).get(METRICS_KEY)
        if extra:
            metrics.update(extra)
        return metrics

    setattr(compute_data_metrics, _MARK, True)
    return compute_data_metrics


def patch_legacy_trainer(module: Any) -> None:
    """Install the wrappers in ``verl.trainer.ppo.ray_trainer`` (idempotent)."""
    module.compute_advantage = wrap_compute_advantage(module.compute_advantage)
    module.compute_data_metrics = wrap_compute_data_metrics(module.compute_data_metrics)


def register_v1_trainer(module: Any) -> None:
    """Register the ``sgpo_sync`` v1 trainer (idempotent); ``module`` is ``verl.trainer.ppo.v1``.
    Its advantage step groups multi-output sessions as verl's GRPO does (:mod:`.sessions`)."""
    trainer_base = sys.modules["verl.trainer.ppo.v1.trainer_base"]
    trainer_base.compute_advantage_for_multi_trajectories = wrap_multi_trajectories(
        trainer_base.compute_advantage_for_multi_trajectories, _is_sgpo
    )
    registry = trainer_base.TRAINER_REGISTRY
    if V1_TRAINER in registry:
        return
    module.register_trainer(V1_TRAINER)(_v1_trainer_class(module.PPOTrainerSync))


def _v1_trainer_class(base: type) -> type:
    class SGPOTrainerSync(base):  # type: ignore[misc, valid-type]
        """verl's synchronous v1 trainer whose advantage step also reads the judge's verdicts
        (each sample's ``reward_extra_info``) and logs the ``sgpo/*`` metrics."""

        def _compute_advantage(self, batch: Any, metrics: dict) -> Any:
            if not _is_sgpo(self.config.algorithm.adv_estimator):
                return super()._compute_advantage(batch, metrics)
            check_no_group_filtering(self.config.algorithm)
            batch_verdicts = verdicts.PendingVerdicts.from_infos(read_reward_extra_info(batch))
            with verdicts.pending(batch_verdicts):
                batch = super()._compute_advantage(batch, metrics)
            if batch_verdicts is not None:
                metrics.update(batch_verdicts.metrics)
            return batch

    SGPOTrainerSync.__module__ = __name__
    return SGPOTrainerSync


def read_reward_extra_info(batch: Any) -> list:
    """Each sample's ``reward_extra_info`` dict from the TransferQueue, in ``batch.keys`` order."""
    import transfer_queue as tq

    data = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=["extra_fields"])
    infos = []
    for value in data["extra_fields"]:
        extra = getattr(value, "data", value)
        infos.append(extra.get("reward_extra_info", {}) if isinstance(extra, dict) else {})
    return infos


_HOOKS: Dict[str, Callable[[Any], None]] = {
    "verl.trainer.ppo.ray_trainer": patch_legacy_trainer,
    "verl.trainer.ppo.v1": register_v1_trainer,
}


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a hook right after one of verl's trainer modules has been executed."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        hook = _HOOKS.get(fullname)
        if hook is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _HookedLoader(spec.loader, hook)
                return spec
        return None


class _HookedLoader(importlib.abc.Loader):
    def __init__(self, loader: Any, hook: Callable[[Any], None]) -> None:
        self._loader = loader
        self._hook = hook

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        self._hook(module)

    def __getattr__(self, name: str) -> Any:  # get_code, get_source, is_package, ...
        return getattr(self._loader, name)


def install() -> None:
    """Hook both trainers: now if verl's modules are loaded, else when they are."""
    # By name, not class: a reload of this module makes a new class, and one finder is enough.
    if not any(
        type(f).__qualname__ == "_AfterImport" and type(f).__module__ == __name__ for f in sys.meta_path
    ):
        sys.meta_path.insert(0, _AfterImport())
    for name, hook in _HOOKS.items():
        module = sys.modules.get(name)
        if module is not None:
            hook(module)
