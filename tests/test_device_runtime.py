"""The device program on the standalone TFLite runtime, in an environment without TensorFlow (.venv-device).

``make test`` builds ``.venv-device`` from ``requirements/device-lock.txt``
(tflite-runtime and NumPy only). A child process there imports
:mod:`device.program`, proves TensorFlow is absent, runs training steps and
scores; they must match TensorFlow's reference step to 1e-5.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from device.program import GROUPS
from device.tflite_trainer import conversions, export
from recfl.core.models import (
    ModelConfig,
    ModelParams,
    ModelSpec,
    init_params,
    predict,
    train_step,
)

REPO = Path(__file__).resolve().parents[1]
DEVICE_PYTHON = REPO / ".venv-device" / "bin" / "python"

CHILD = r"""
import sys
import numpy as np
from device.program import DeviceProgram, StepSettings
assert "tensorflow" not in sys.modules
try:
    import tensorflow  # noqa: F401
    sys.exit("tensorflow is importable in the device environment")
except ImportError:
    pass
import tflite_runtime
inputs = np.load(sys.argv[2])
count = int(inputs["count"])
program = DeviceProgram(sys.argv[1], [inputs[f"w{k}"].shape for k in range(count)])
program.set_weights([inputs[f"anchor{k}"] for k in range(count)])
program.set_anchor([inputs[f"anchor{k}"] for k in range(count)])
program.set_weights([inputs[f"w{k}"] for k in range(count)])
losses = []
for s in range(int(inputs["steps"])):
    batch = {key: inputs[f"b{s}_{key}"] for key in ("item", "cats", "hist", "label", "weight")}
    lr, pairwise, elastic, *masks = inputs[f"settings{s}"]
    trainable = tuple(g for g, m in zip(("tables", "dense", "private"), masks) if m)
    losses.append(program.train_step(batch, StepSettings(float(lr), float(pairwise), float(elastic), trainable)))
scores = program.predict({key: inputs[f"b0_{key}"] for key in ("item", "cats", "hist")})
np.savez(sys.argv[3], losses=np.array(losses), scores=scores, runtime=np.array(tflite_runtime.__version__),
         **{f"w{k}": w for k, w in enumerate(program.get_weights())})
"""


def _batch(rng, n, c: ModelConfig, rows=40) -> dict:
    hist = rng.integers(1, rows, (n, c.history)).astype(np.int32)
    hist[:, :2] *= rng.random((n, 2)) < 0.5  # PAD slots
    item = rng.integers(1, rows, n).astype(np.int32)
    item[: n // 2] = item[0]  # duplicate rows in one batch
    return {"item": item, "cats": rng.integers(0, 16, (n, c.max_categories)).astype(np.int32), "hist": hist,
            "label": (rng.random(n) < 0.4).astype(np.float32), "weight": rng.uniform(0.2, 2.0, n).astype(np.float32)}


@pytest.mark.parametrize("name", ["mean", "attention"])
def test_device_program_trains_without_tensorflow(tmp_path, name):
    assert DEVICE_PYTHON.is_file(), f"{DEVICE_PYTHON} is missing: run `make test` (it builds the device environment)"
    config = ModelConfig(name=name, embed_dim=8, hidden=(16, 8), history=5, max_categories=3)
    spec = ModelSpec.build(config, {"items": 128, "categories": 16})
    path = export(spec, tmp_path / "cache", 16, ops="builtin")
    assert conversions(tmp_path / "cache")[-1]["flex_nodes"] == {}
    params, anchor = init_params(spec, 1), init_params(spec, 2)
    params.private["user"] = np.linspace(-0.3, 0.3, 8).astype(np.float32)
    rng = np.random.default_rng(0)
    plan = [(16, (0.3, 0.0, 0.0, 1, 1, 1)), (5, (0.3, 1.0, 0.0, 1, 1, 1)), (16, (0.2, 0.5, 0.5, 1, 1, 1)),
            (9, (0.3, 0.0, 0.0, 0, 0, 1)), (16, (0.3, 0.5, 0.2, 1, 0, 1))]
    inputs = {"count": len(spec.shapes()), "steps": len(plan)}
    weights, anchor_t, want_losses = [tf.constant(a) for a in params.arrays()], [tf.constant(a) for a in anchor.arrays()], []
    for s, (n, settings) in enumerate(plan):
        batch = _batch(rng, n, config)
        lr, pairwise, elastic, *masks = settings
        weights, loss = train_step(spec, weights, batch, lr, pairwise, anchor_t, elastic, dict(zip(GROUPS, map(float, masks))))
        want_losses.append(float(loss))
        inputs.update({f"b{s}_{k}": v for k, v in batch.items()}, **{f"settings{s}": np.array(settings, np.float32)})
    inputs.update({f"w{k}": a for k, a in enumerate(params.arrays())}, **{f"anchor{k}": a for k, a in enumerate(anchor.arrays())})
    np.savez(tmp_path / "inputs.npz", **inputs)

    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")} | {"PYTHONPATH": str(REPO)}
    done = subprocess.run([str(DEVICE_PYTHON), "-c", CHILD, str(path), str(tmp_path / "inputs.npz"), str(tmp_path / "out.npz")],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with np.load(tmp_path / "out.npz") as out:
        assert str(out["runtime"]) == "2.14.0"
        np.testing.assert_allclose(out["losses"], want_losses, atol=1e-5)
        for k, want in enumerate(weights):
            np.testing.assert_allclose(out[f"w{k}"], want.numpy(), atol=1e-5)
        final = [w.numpy() for w in weights]
        first = {k: inputs[f"b0_{k}"] for k in ("item", "cats", "hist")}
        np.testing.assert_allclose(out["scores"], predict(spec, ModelParams.from_arrays(spec, final), first), atol=1e-5)
    assert sys.modules.get("tflite_runtime") is None  # the parent used TensorFlow's interpreter, the child the runtime's
