"""Model names: the built-in models and ``package.module:factory`` plug-ins."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from functools import lru_cache

from recfl.core.errors import RecflError
from recfl.core.models import attention, mean
from recfl.core.models.definition import ModelConfig, ModelDef

BUILTIN: dict[str, Callable[[ModelConfig], ModelDef]] = {"mean": mean.build, "attention": attention.build}


@lru_cache(maxsize=32)
def resolve(config: ModelConfig) -> ModelDef:
    """The :class:`ModelDef` of ``config.name``: a built-in model or a ``package.module:factory``."""
    name = config.name
    if name in BUILTIN:
        factory = BUILTIN[name]
    elif ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise RecflError(f"model.name = {name!r}: cannot import the factory ({type(exc).__name__}: {exc})") from None
    else:
        raise RecflError(f"model.name = {name!r}: choose {', '.join(BUILTIN)} or a factory 'package.module:function'")
    try:
        definition = factory(config)
    except RecflError:
        raise
    except Exception as exc:  # a user's factory: its failure is a configuration error, not a crash
        raise RecflError(f"model.name = {name!r}: the factory failed ({type(exc).__name__}: {exc})") from None
    if not isinstance(definition, ModelDef):
        raise RecflError(f"model.name = {name!r}: the factory returned {type(definition).__name__}, not a ModelDef")
    return definition
