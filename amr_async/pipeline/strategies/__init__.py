"""Strategies: `direct`, `cot`, `ansrepair` (the paper's baselines) and `amr-evol`."""

from amr_async.pipeline.strategies.amr_evol import AmrEvolConfig as AmrEvolConfig
from amr_async.pipeline.strategies.amr_evol import AmrEvolStrategy as AmrEvolStrategy
from amr_async.pipeline.strategies.base import ItemFailed as ItemFailed
from amr_async.pipeline.strategies.base import Stage as Stage
from amr_async.pipeline.strategies.base import StageResult as StageResult
from amr_async.pipeline.strategies.base import Strategy as Strategy
from amr_async.pipeline.strategies.base import Windowed as Windowed
from amr_async.pipeline.strategies.baselines import AnsRepairStrategy as AnsRepairStrategy
from amr_async.pipeline.strategies.baselines import CallSettings as CallSettings
from amr_async.pipeline.strategies.baselines import CotStrategy as CotStrategy
from amr_async.pipeline.strategies.direct import DirectStrategy as DirectStrategy

__all__ = [
    "AmrEvolConfig",
    "AmrEvolStrategy",
    "AnsRepairStrategy",
    "CallSettings",
    "CotStrategy",
    "DirectStrategy",
    "ItemFailed",
    "Stage",
    "StageResult",
    "Strategy",
    "Windowed",
]
