"""Recommender models: the interface every trainer accepts, the built-in models and model directories.

See :mod:`recfl.core.models.definition` for how to define a model; ``[model]
name`` selects ``mean`` (mean-pooled history), ``attention`` (target
attention over the history) or ``package.module:factory``.
"""

from recfl.core.models.definition import GROUPS, ModelConfig, ModelDef, Table, Weights
from recfl.core.models.layers import masked_mean, mlp, mlp_shapes, relu
from recfl.core.models.objective import Objective, batch_loss, train_step
from recfl.core.models.registry import BUILTIN, resolve
from recfl.core.models.serving import (
           export_saved_model,
           load_model,
           predict,
           save_model,
           vocabulary_sizes,
)
from recfl.core.models.spec import ModelParams, ModelSpec, init_params, weights_of

__all__ = ["BUILTIN", "GROUPS", "ModelConfig", "ModelDef", "ModelParams", "ModelSpec", "Objective", "Table", "Weights",
           "batch_loss", "export_saved_model", "init_params", "load_model", "masked_mean", "mlp", "mlp_shapes", "predict",
           "relu", "resolve", "save_model", "train_step", "vocabulary_sizes", "weights_of"]
