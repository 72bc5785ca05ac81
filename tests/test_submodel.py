"""Submodels: local indices give the same predictions as the full model."""

from __future__ import annotations

import numpy as np
import pytest

from recfl.core.errors import RecflError
from recfl.core.features import Examples
from recfl.core.models import ModelConfig, ModelSpec, init_params, predict
from recfl.core.submodel import Submodel

SPEC = ModelSpec.build(ModelConfig(embed_dim=4, hidden=(8,), history=5, max_categories=2), {"items": 300, "categories": 20})


def _examples(seed, n=40):
    rng = np.random.default_rng(seed)
    hist = rng.integers(2, 300, (n, 5)).astype(np.int32)
    hist[:, :2] = 0  # padding
    return Examples(
        item=rng.integers(1, 300, n).astype(np.int32), cats=rng.integers(0, 20, (n, 2)).astype(np.int32), hist=hist,
        label=rng.integers(0, 2, n).astype(np.float32), user_id=np.zeros(n, np.int64), timestamp=np.zeros(n, np.int64),
    )


def test_local_predictions_equal_global_ones():
    params = init_params(SPEC, 0)
    a, b = _examples(1), _examples(2)
    sub = Submodel.covering(SPEC, a, b)
    assert list(sub.rows["item"][:2]) == [0, 1] and np.all(np.diff(sub.rows["item"]) > 0)
    local = sub.localize(b)
    assert local.hist[:, :2].max() == 0  # PAD stays 0
    small = sub.extract(params)
    sub_spec = SPEC.with_rows(sub.sizes)
    np.testing.assert_allclose(predict(sub_spec, small, local.inputs()), predict(SPEC, params, b.inputs()), rtol=1e-6)
    padded = sub.extract(params, capacity={"item": 200, "category": 20})
    np.testing.assert_allclose(predict(SPEC.with_rows({"item": 200, "category": 20}), padded, local.inputs()), predict(SPEC, params, b.inputs()), rtol=1e-6)


def test_uncovered_rows_and_small_capacity_are_refused():
    sub = Submodel.covering(SPEC, _examples(1))
    with pytest.raises(ValueError, match="outside the submodel"):
        sub.localize(_examples(3))
    with pytest.raises(RecflError, match="capacity"):
        sub.extract(init_params(SPEC, 0), capacity={"item": 5, "category": 20})
