"""Training implicit networks that stay well-posed at every step.

The network (:class:`ImplicitNetwork`), the constraints (projection onto the μ∞ polytope,
the ‖·‖∞ ball, the seed authors' and the monotone parametrisations), the optimisers, the
projected-gradient trainer (:func:`train`), data sets (:func:`load_dataset`) and
checkpoints (:func:`save`, :func:`load`).
"""

from ._augment import augment_images
from ._checkpoint import CheckpointError, load, load_training, save
from ._constraints import CONSTRAINTS, CONV_CONSTRAINTS, Constraint, make_constraint
from ._data import DATASETS, load_dataset, read_idx, split_validation
from ._conv_network import ConvImplicitNetwork
from ._network import LOCAL_RATE_SAMPLES, LOSSES, Gradients, ImplicitNetwork, SolverConfig
from ._optim import OptimizerConfig, OptimizerState, Schedule
from ._report import evaluate, format_epoch_table, format_report, history_figure, plot_history
from ._reproduce import ModelSpec, ReproduceInterrupted, format_reproduce_table, model_specs, reproduce
from ._robust import (
    certified_accuracy,
    fgsm_attack,
    format_robustness,
    plot_robustness,
    interval_bounds,
    pgd_attack,
    robust_accuracy,
    robustness_figure,
    robustness_table,
)
from ._trainer import (CERTIFIED_SAMPLES, History, TrainConfig, TrainerState, TrainingCollapsed, lipschitz_penalty,
                       train)

__all__ = [
    "CONSTRAINTS",
    "CONV_CONSTRAINTS",
    "CheckpointError",
    "Constraint",
    "ConvImplicitNetwork",
    "DATASETS",
    "Gradients",
    "History",
    "CERTIFIED_SAMPLES",
    "LOCAL_RATE_SAMPLES",
    "ImplicitNetwork",
    "LOSSES",
    "OptimizerConfig",
    "OptimizerState",
    "Schedule",
    "SolverConfig",
    "TrainConfig",
    "TrainerState",
    "TrainingCollapsed",
    "augment_images",
    "ModelSpec",
    "ReproduceInterrupted",
    "certified_accuracy",
    "evaluate",
    "format_epoch_table",
    "format_report",
    "format_reproduce_table",
    "format_robustness",
    "model_specs",
    "history_figure",
    "plot_history",
    "plot_robustness",
    "reproduce",
    "fgsm_attack",
    "interval_bounds",
    "lipschitz_penalty",
    "pgd_attack",
    "robust_accuracy",
    "robustness_figure",
    "robustness_table",
    "load",
    "load_dataset",
    "load_training",
    "make_constraint",
    "read_idx",
    "split_validation",
    "save",
    "train",
]
