"""Strategies: `direct` (the paper's baseline); amr-evol, cot and ansrepair build on `base`."""

from amr_async.pipeline.strategies.base import ItemFailed as ItemFailed
from amr_async.pipeline.strategies.base import Stage as Stage
from amr_async.pipeline.strategies.base import StageResult as StageResult
from amr_async.pipeline.strategies.base import Strategy as Strategy
from amr_async.pipeline.strategies.direct import DirectStrategy as DirectStrategy

__all__ = ["DirectStrategy", "ItemFailed", "Stage", "StageResult", "Strategy"]
