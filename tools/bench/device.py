"""What CoDA costs one device: .tflite size, download, classifier and fine-tuning time, memory.

A synthetic data set (standard: the ``[synthetic]`` defaults, 2,000 users x
5,000 items; quick mode: 600 users x 2,000 items) gets a pool of half the
users, a cloud model trained on them (one epoch: cost, not quality, is
measured here) and coarse-matched candidates with the default budget. Then
``device.personalize.run_device`` runs the ``coda`` arm for a sample of
device users with the default ``[filter]`` and ``[finetune]`` settings, and
its per-device report gives the medians. The in-run reference is the
training step itself: one SGD step of the TFLite ``train`` signature against
the same step of the same model definition in TensorFlow
(``recfl.core.model.sgd_step`` in a ``tf.function``), same weights and batch.
Peak memory is measured in fresh processes: the interpreter loading the
``.tflite`` and fine-tuning the median device, against the same steps in TF.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cloud_pool.matching import write_candidates
from cloud_pool.pool import build_pool
from device.personalize import WorkerSettings, device_tasks, run_device
from device.sample_filter import FilterConfig
from device.tflite_trainer import DeviceTrainer, FinetuneConfig, export
from recfl.core.dataset import PreparedDataset, prepare
from recfl.core.features import Examples
from recfl.core.formats import SyntheticSpec, load
from recfl.core.model import init_params, load_model, sgd_step
from recfl.core.pool import load_split
from recfl.core.train import TrainConfig, train_cloud_model
from tools.bench import Figure, in_fresh_process, median_seconds, peak_rss_mb

BENCH = "device"


@dataclass(frozen=True)
class Scale:
    users: int
    items: int
    devices: int  # device users personalized and measured


QUICK = Scale(600, 2_000, 20)
FULL = Scale(2_000, 5_000, 100)


def _setup(scale: Scale, root: Path) -> None:
    """Data, pool, a cloud model trained on the sharing users, candidates, and the exported .tflite."""

    data = prepare(load("synthetic", None, SyntheticSpec(users=scale.users, items=scale.items, seed=0)), root / "data")
    split = build_pool(data, root / "pool", 0.5)
    train_cloud_model(data, root / "model", config=TrainConfig(epochs=1), progress=False, train_users=split.sharing_users,
                      test_users=split.device_users)
    write_candidates(root / "pool", data, root / "cands", progress=False)
    spec, _ = load_model(root / "model")
    cfg = FinetuneConfig()
    export(spec.with_rows(cfg.item_capacity, cfg.category_capacity), root / "model" / "tflite")


def _devices(scale: Scale, root: Path) -> dict:
    """Per-device reports of the coda arm, and the TF vs TFLite step times on a device-sized batch."""
    import tensorflow as tf


    data, cfg = PreparedDataset(root / "data"), FinetuneConfig()
    spec, params = load_model(root / "model")
    device_spec = spec.with_rows(cfg.item_capacity, cfg.category_capacity)
    path = export(device_spec, root / "model" / "tflite")
    users = np.intersect1d(load_split(root / "pool").device_users, data.test["user_id"].unique())
    users = np.sort(np.random.default_rng(0).permutation(users)[: scale.devices])
    settings = WorkerSettings("coda", data.root, root / "model", path, FilterConfig(), cfg, root / "devices")
    (root / "devices").mkdir(exist_ok=True)
    ctx = settings.context()
    reports = [run_device(task, ctx)[1] for task in device_tasks(data, spec, users, "coda", root / "pool", root / "cands", None)]

    rng = np.random.default_rng(1)
    weights = init_params(device_spec, 0)
    ctx.trainer.set_params(weights)
    batch = dict(item=rng.integers(2, 400, cfg.batch_size).astype(np.int32),
                 cats=rng.integers(0, 20, (cfg.batch_size, spec.max_categories)).astype(np.int32),
                 hist=rng.integers(0, 400, (cfg.batch_size, spec.history)).astype(np.int32),
                 label=(rng.random(cfg.batch_size) < 0.3).astype(np.float32))
    runner, lr = ctx.trainer.runners["train"], np.float32(cfg.learning_rate)
    variables = [tf.Variable(a) for a in weights.arrays()]
    tensors = {k: tf.constant(v) for k, v in batch.items()}

    @tf.function
    def tf_step(item, cats, hist, label):
        updated, loss = sgd_step(variables, item, cats, hist, label, cfg.learning_rate)
        for var, new in zip(variables, updated):
            var.assign(new)
        return loss

    tflite_s = median_seconds(lambda: runner(**batch, lr=lr), repeats=200, warmup=10)
    tf_s = median_seconds(lambda: tf_step(**tensors).numpy(), repeats=200, warmup=10)
    return {"reports": pd.DataFrame(reports).to_dict("list"), "tflite_step": tflite_s, "tf_step": tf_s,
            "tflite_bytes": path.stat().st_size, "capacity_weight_bytes": init_params(device_spec, 0).nbytes(),
            "global_bytes": params.nbytes(), "tflite": str(path)}


def _memory(root: Path, tflite: str, steps: int, runtime: str) -> dict:
    """Peak RSS of fine-tuning ``steps`` SGD steps in ``runtime`` (tflite or tf), beyond the imports."""
    import tensorflow as tf


    cfg = FinetuneConfig()
    spec, _ = load_model(root / "model")
    device_spec = spec.with_rows(cfg.item_capacity, cfg.category_capacity)
    rng = np.random.default_rng(2)
    n = cfg.batch_size
    batch = Examples(rng.integers(2, 400, n).astype(np.int32), rng.integers(0, 20, (n, spec.max_categories)).astype(np.int32),
                     rng.integers(0, 400, (n, spec.history)).astype(np.int32), (rng.random(n) < 0.3).astype(np.float32),
                     np.zeros(n, np.int64), np.zeros(n, np.int64))
    weights = init_params(device_spec, 0)
    baseline = peak_rss_mb()
    if runtime == "tflite":
        trainer = DeviceTrainer(Path(tflite), device_spec)
        trainer.set_params(weights)
        for _ in range(steps):
            trainer.train_step(batch, cfg.learning_rate)
    else:
        variables = [tf.Variable(a) for a in weights.arrays()]

        @tf.function
        def step(item, cats, hist, label):
            updated, loss = sgd_step(variables, item, cats, hist, label, cfg.learning_rate)
            for var, new in zip(variables, updated):
                var.assign(new)
            return loss

        for _ in range(steps):
            step(batch.item, batch.cats, batch.hist, batch.label)
    return {"baseline_mb": baseline, "peak_mb": peak_rss_mb()}


def run(size: str) -> list[Figure]:
    scale = QUICK if size == "quick" else FULL
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        in_fresh_process(_setup, scale, root)
        got = in_fresh_process(_devices, scale, root)
        r = {k: np.asarray(v) for k, v in got["reports"].items()}
        steps = int(np.median(r["steps"]))
        mem = {name: in_fresh_process(_memory, root, got["tflite"], steps, name) for name in ("tflite", "tf")}
    n = len(r["user_id"])
    down = r["submodel_bytes"] + r["candidate_bytes"]
    classified = r["filter_path"] == "classifier"
    grow = {k: v["peak_mb"] - v["baseline_mb"] for k, v in mem.items()}
    where = f"median of {n} device users, coda arm, default [filter]/[finetune]"
    return [
        Figure(BENCH, "TFLite training step (batch 32)", got["tflite_step"] * 1e3, "ms", "TF tf.function step (same model, weights, batch)",
               got["tf_step"] * 1e3, note="median of 200"),
        Figure(BENCH, ".tflite size (item capacity 4096, category 256)", got["tflite_bytes"] / 1e6, "MB",
               "its weights as float32 arrays", got["capacity_weight_bytes"] / 1e6),
        Figure(BENCH, "submodel download per device", float(np.median(r["submodel_bytes"])) / 1e3, "kB",
               "the whole global model", got["global_bytes"] / 1e3, note=f"{where}; rows: median {np.median(r['item_rows']):.0f} items"),
        Figure(BENCH, "bytes down per device (submodel + candidates)", float(np.median(down)) / 1e3, "kB",
               "the whole global model", got["global_bytes"] / 1e3,
               note=f"{where}; median {np.median(r['candidates']):.0f} candidates"),
        Figure(BENCH, "sample classifier time per device", float(np.median(r["filter_seconds"])), "s",
               "fine-tuning time of the same devices", float(np.median(r["finetune_seconds"])),
               note=f"{where}; {int(classified.sum())}/{n} took the classifier path (5 folds)"),
        Figure(BENCH, "fine-tuning time per device", float(np.median(r["finetune_seconds"])), "s",
               note=f"{where}; median {steps} steps, {np.median(r['epochs']):.0f} epochs"),
        Figure(BENCH, f"fine-tuning peak memory ({steps} steps)", grow["tflite"], "MB", "the same steps in TF", grow["tf"],
               note="RSS growth beyond the imports, fresh process each"),
    ]
