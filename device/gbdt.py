"""A LightGBM booster driven through LightGBM's own C API, for the sample filter's many tiny fits.

The filter fits one booster per fold on a few hundred samples, on every
device. There, ``lgb.Dataset`` and ``lgb.Booster`` spend more time in
Python than LightGBM spends building the data set: argument inspection,
data-frame type checks, parameter copies and string conversion cost about
1 ms of a 2-3 ms fit (measured on the ``recfl bench`` devices: 0.6-1.0 ms
for data set and booster through the C API against 1.5-2.5 ms through the
wrapper). This module makes the same library calls the wrapper makes, with
the same parameters, so the scores are identical (a test compares them);
it uses the library and error handling of the pinned ``lightgbm`` package.
"""

from __future__ import annotations

import ctypes
import weakref

import numpy as np
from lightgbm.basic import _LIB, _c_str, _safe_call

_FLOAT32, _FLOAT64 = 0, 1  # C_API_DTYPE_*
_PREDICT_NORMAL = 0  # C_API_PREDICT_NORMAL: probabilities for the binary objective


def _param_string(params: dict) -> str:
    """LightGBM's ``key=value`` parameter string (lists comma-separated, booleans lower case)."""
    def text(value) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, (list, tuple)):
            return ",".join(map(str, value))
        return str(value)

    return " ".join(f"{key}={text(value)}" for key, value in params.items())


def _free(booster: ctypes.c_void_p, dataset: ctypes.c_void_p) -> None:
    _LIB.LGBM_BoosterFree(booster)
    _LIB.LGBM_DatasetFree(dataset)


def _matrix(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"a booster takes a [rows, features] matrix, got shape {x.shape}")
    return x


class NativeBooster:
    """A LightGBM booster trained ``rounds`` rounds on ``x`` (rows) with ``label`` and ``weight``; ``params`` are
    LightGBM parameters as ``lgb.Booster`` takes them (``categorical_feature`` a list of column indices)."""

    def __init__(self, x: np.ndarray, label: np.ndarray, weight: np.ndarray, params: dict, rounds: int):
        x = _matrix(x)
        self.n_features = x.shape[1]
        settings = _c_str(_param_string(params))
        self._dataset, self._booster = ctypes.c_void_p(), ctypes.c_void_p()
        _safe_call(_LIB.LGBM_DatasetCreateFromMat(
            x.ctypes.data_as(ctypes.c_void_p), ctypes.c_int(_FLOAT64), ctypes.c_int32(x.shape[0]),
            ctypes.c_int32(x.shape[1]), ctypes.c_int(1), settings, None, ctypes.byref(self._dataset)))
        self._free = weakref.finalize(self, _free, self._booster, self._dataset)
        for field, values in (("label", label), ("weight", weight)):
            values = np.ascontiguousarray(values, dtype=np.float32)
            _safe_call(_LIB.LGBM_DatasetSetField(self._dataset, _c_str(field), values.ctypes.data_as(ctypes.c_void_p),
                                                 ctypes.c_int(len(values)), ctypes.c_int(_FLOAT32)))
        _safe_call(_LIB.LGBM_BoosterCreate(self._dataset, settings, ctypes.byref(self._booster)))
        finished = ctypes.c_int(0)
        for _ in range(rounds):
            _safe_call(_LIB.LGBM_BoosterUpdateOneIter(self._booster, ctypes.byref(finished)))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities of class 1 for the rows of ``x``, on one thread."""
        x = _matrix(x)
        if x.shape[1] != self.n_features:
            raise ValueError(f"the booster has {self.n_features} features, x has {x.shape[1]}")
        out, written = np.empty(len(x), dtype=np.float64), ctypes.c_int64(0)
        if len(x):
            _safe_call(_LIB.LGBM_BoosterPredictForMat(
                self._booster, x.ctypes.data_as(ctypes.c_void_p), ctypes.c_int(_FLOAT64), ctypes.c_int32(x.shape[0]),
                ctypes.c_int32(x.shape[1]), ctypes.c_int(1), ctypes.c_int(_PREDICT_NORMAL), ctypes.c_int(0),
                ctypes.c_int(-1), _c_str("num_threads=1"), ctypes.byref(written),
                out.ctypes.data_as(ctypes.POINTER(ctypes.c_double))))
        return out

    def close(self) -> None:
        """Free the booster and its data set now (otherwise when the object is collected)."""
        self._free()
