"""The filter's booster through LightGBM's C API gives the scores of LightGBM's own Python wrapper."""

import lightgbm as lgb
import numpy as np
import pytest

from device.gbdt import NativeBooster

PARAMS = {"objective": "binary", "num_leaves": 4, "learning_rate": 0.1, "min_data_in_leaf": 5, "min_data_per_group": 5,
          "cat_smooth": 10.0, "seed": 0, "deterministic": True, "force_row_wise": True, "num_threads": 1, "verbose": -1}


def _data(rng, n):
    """Two categorical columns and three numeric ones; the label depends on both kinds."""
    cats = rng.integers(0, 12, (n, 2)).astype(np.float64)
    nums = rng.normal(size=(n, 3))
    y = ((cats[:, 0] % 3 == 0) ^ (nums[:, 0] + 0.5 * nums[:, 1] > 0.3)).astype(np.float64)
    return np.hstack([cats, nums]), y


def test_scores_equal_the_python_wrapper_with_weights_and_categorical_columns():
    rng = np.random.default_rng(0)
    x, y = _data(rng, 400)
    weight = np.where(y == 1, 2.0, 0.5)
    params = {**PARAMS, "categorical_feature": [0, 1]}
    native = NativeBooster(x, y, weight, params, rounds=15)
    reference = lgb.Booster(PARAMS, lgb.Dataset(x, label=y, weight=weight, categorical_feature=[0, 1], params=PARAMS))
    for _ in range(15):
        reference.update()
    held_out, _ = _data(rng, 200)
    scores = native.predict(held_out)
    np.testing.assert_array_equal(scores, reference.predict(held_out, num_threads=1))
    assert scores.std() > 0.05  # the model learned something: equal scores are not two constants
    native.close()
    native.close()  # freeing twice is a no-op


def test_an_empty_input_scores_nothing_and_a_wrong_width_is_refused():
    rng = np.random.default_rng(1)
    x, y = _data(rng, 100)
    booster = NativeBooster(x, y, np.ones(len(y)), PARAMS, rounds=3)
    assert booster.predict(np.zeros((0, 5))).shape == (0,)
    with pytest.raises(ValueError, match="5 features, x has 4"):
        booster.predict(x[:, :4])


def test_a_parameter_lightgbm_rejects_raises_its_error():
    x, y = _data(np.random.default_rng(2), 50)
    with pytest.raises(lgb.basic.LightGBMError):
        NativeBooster(x, y, np.ones(len(y)), {**PARAMS, "num_leaves": 1}, rounds=1)
