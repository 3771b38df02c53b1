"""The pipeline: input streaming, strategies and their stages, the resumable runner.

Runner              streams an input JSONL through a strategy (bounded window)
RunSettings         concurrency, batch size, line-size cap
RunReport, ExitCode how a run ended
JournaledTeacher    the door for every teacher call: journal, budget, dispatcher
strategies/         amr-evol, and the paper's baselines direct, cot, ansrepair
prompts/            prompt templates (TOML, one per kind; `load_templates` takes a user dir)
instructions        instruction generation: self-instruct, Evol-Instruct levels, dedup
seed                the seed module DB by self-instruct (`db seed --self-instruct N`)
export              a run's output as OpenAI chat / Alpaca / ShareGPT training data
"""

from amr_async.pipeline._input import InputItem as InputItem
from amr_async.pipeline._input import InputReader as InputReader
from amr_async.pipeline._input import Reject as Reject
from amr_async.pipeline._input import parse_line as parse_line
from amr_async.pipeline._teacher import BudgetExhausted as BudgetExhausted
from amr_async.pipeline._teacher import JournaledTeacher as JournaledTeacher
from amr_async.pipeline._teacher import TeacherUnavailable as TeacherUnavailable
from amr_async.pipeline.runner import ExitCode as ExitCode
from amr_async.pipeline.runner import Runner as Runner
from amr_async.pipeline.runner import RunReport as RunReport
from amr_async.pipeline.runner import RunSettings as RunSettings

__all__ = [
    "BudgetExhausted",
    "ExitCode",
    "InputItem",
    "InputReader",
    "JournaledTeacher",
    "Reject",
    "RunReport",
    "RunSettings",
    "Runner",
    "TeacherUnavailable",
    "parse_line",
]
