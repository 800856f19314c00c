"""The training engine shared by every task: configs, the loop, checkpoints, distribution."""

from unitransformer.engine.batchnorm import load_for_use, recalibrate_batchnorm
from unitransformer.engine.checkpoint import (
    CheckpointError,
    average_checkpoints,
    load_weights,
    read_run_config,
)
from unitransformer.engine.config import (
    ConfigError,
    ConfigValueError,
    EvalConfig,
    OptimConfig,
    ScheduleConfig,
    TrainConfig,
    require,
)
from unitransformer.engine.loader import (
    config_diff,
    config_from_dict,
    config_to_dict,
    defaults_of,
    load_config,
)
from unitransformer.engine.muon import Muon, muon_groups
from unitransformer.engine.runtime import evaluate_run
from unitransformer.engine.task import StepOutput, Task
from unitransformer.engine.trainer import Trainer, TrainingStoppedError

__all__ = [
    "CheckpointError",
    "ConfigError",
    "ConfigValueError",
    "EvalConfig",
    "Muon",
    "OptimConfig",
    "ScheduleConfig",
    "StepOutput",
    "Task",
    "TrainConfig",
    "Trainer",
    "TrainingStoppedError",
    "average_checkpoints",
    "config_diff",
    "config_from_dict",
    "config_to_dict",
    "defaults_of",
    "evaluate_run",
    "load_config",
    "load_for_use",
    "load_weights",
    "muon_groups",
    "read_run_config",
    "recalibrate_batchnorm",
    "require",
]
