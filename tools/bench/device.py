"""What CoDA costs one device, and what the device program needs: step times, sizes, download, memory.

A synthetic data set (standard: the ``[synthetic]`` defaults, 2,000 users x
5,000 items; quick mode: 600 users x 2,000 items) gets a pool of half the
users, a cloud model trained on them (one epoch: cost, not quality, is
measured here) and coarse-matched candidates with the default budget. Then
``device.personalize.run_device`` runs the ``local`` and ``coda`` arms for
the same sample of device users with the default ``[filter]`` and
``[finetune]`` settings, and their per-device reports give the medians.

In-run references:

- the TFLite training step (builtin ops only) against the same step in
  TensorFlow (``recfl.core.models.train_step`` in a ``tf.function``) and
  against the same step converted with TensorFlow's own ReLU, whose gradient
  (``ReluGrad``) runs through the Flex delegate; same weights and batch, for
  the mean-pooled and the attention model;
- the ``.tflite`` size against its weights as float32 arrays;
- the runtime a device needs: the ``tflite_runtime`` package of
  ``.venv-device`` against the ``tensorflow`` package (disk size);
- the coda arm's device time against the local arm's, same devices;
- peak memory in fresh processes: fine-tuning in the interpreter against the
  same steps in TF.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from cloud_pool.matching import write_candidates
from cloud_pool.pool import build_pool
from device.personalize import WorkerSettings, device_tasks, run_device
from device.sample_filter import FilterConfig
from device.tflite_trainer import DeviceTrainer, FinetuneConfig, conversion_of, export
from recfl.app.candidates import candidate_source
from recfl.core.arms import CODA, LOCAL
from recfl.core.dataset import PreparedDataset, prepare
from recfl.core.features import Examples
from recfl.core.formats import SyntheticSpec, load
from recfl.core.models import (
    ModelConfig,
    ModelDef,
    ModelSpec,
    init_params,
    load_model,
    mean,
    train_step,
)
from recfl.core.pool import load_split
from recfl.core.train import TrainConfig, train_cloud_model
from tools.bench import Figure, in_fresh_process, median_seconds, peak_rss_mb

BENCH = "device"
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Scale:
    users: int
    items: int
    devices: int  # device users personalized and measured


QUICK = Scale(600, 2_000, 20)
FULL = Scale(2_000, 5_000, 100)


def flex_relu(config: ModelConfig) -> ModelDef:
    """The mean-pooled model with TensorFlow's own ReLU: its gradient needs the Flex delegate (the reference)."""
    import tensorflow as tf

    return replace(mean.build(config, activation=tf.nn.relu), name="mean (tf.nn.relu)")


def _setup(scale: Scale, root: Path) -> int:
    """Data, pool, a cloud model trained on the sharing users, candidates; returns the model's bytes."""
    data = prepare(load("synthetic", None, SyntheticSpec(users=scale.users, items=scale.items, seed=0)), root / "data")
    split = build_pool(data, root / "pool", 0.5)
    train_cloud_model(data, root / "model", config=TrainConfig(epochs=1), progress=False, train_users=split.sharing_users,
                      test_users=split.device_users)
    write_candidates(root / "pool", data, root / "cands", progress=False)
    return load_model(root / "model")[1].nbytes()


def _reports(scale: Scale, root: Path) -> dict[str, dict]:
    """Per-device reports of the ``local`` and ``coda`` arms for the measured device users, by arm name. The two
    arms take turns on each device, which of them goes first alternating, so both see the machine in the same
    state: run one after the other, three runs of the same code gave 1.75x, 2.16x and 2.01x."""
    data, cfg = PreparedDataset(root / "data"), FinetuneConfig()
    spec, _ = load_model(root / "model")
    path = export(cfg.program_spec(spec), root / "tflite", cfg.batch_size, cfg.ops)
    users = np.intersect1d(load_split(root / "pool").device_users, data.test["user_id"].unique())
    users = np.sort(np.random.default_rng(0).permutation(users)[: scale.devices])
    contexts = {}
    for arm in (LOCAL, CODA):
        devices = root / f"devices-{arm.name}"
        devices.mkdir(exist_ok=True)
        contexts[arm.name] = WorkerSettings(arm, data.root, root / "model", path, FilterConfig(), cfg, devices).context()
    rows: dict[str, list] = {name: [] for name in contexts}
    # the coda arm's tasks carry candidates; run_device gives none to an arm without them (local)
    tasks = device_tasks(data, spec, users, CODA, root / "pool", candidate_source(data, root / "pool", root / "cands"))
    for k, task in enumerate(tasks):
        for name in list(contexts)[:: 1 if k % 2 == 0 else -1]:
            rows[name].append(run_device(task, contexts[name])[1])
    return {name: pd.DataFrame(r).to_dict("list") for name, r in rows.items()}


def _batch(spec: ModelSpec, n: int, seed: int) -> Examples:
    rng = np.random.default_rng(seed)
    c = spec.config
    return Examples(rng.integers(2, 400, n).astype(np.int32), rng.integers(0, 20, (n, c.max_categories)).astype(np.int32),
                    rng.integers(0, 400, (n, c.history)).astype(np.int32), (rng.random(n) < 0.3).astype(np.float32),
                    np.zeros(n, np.int64), np.zeros(n, np.int64))


def _steps(root: Path, name: str) -> dict:
    """Step times of one model: builtin TFLite program, the Flex reference (mean only) and TF; sizes."""
    import tensorflow as tf

    cfg = FinetuneConfig()
    cloud, _ = load_model(root / "model")
    spec = cfg.program_spec(ModelSpec.build(replace(cloud.config, name=name), {"items": 5000, "categories": 100}))
    path = export(spec, root / "tflite", cfg.batch_size, "builtin")
    weights, batch, settings = init_params(spec, 0), _batch(spec, cfg.batch_size, 1), cfg.step
    trainer = DeviceTrainer(path, spec)
    trainer.set_params(weights, anchor=True)
    out = {"builtin_step": median_seconds(lambda: trainer.train_step(batch, settings), repeats=300, warmup=20),
           "tflite_bytes": path.stat().st_size, "weight_bytes": weights.nbytes(), "flex_nodes": conversion_of(path)["flex_nodes"]}
    if name == "mean":
        flex_spec = replace(spec, config=replace(spec.config, name=f"{__name__}:flex_relu"))
        flex_path = export(flex_spec, root / "tflite", cfg.batch_size, "flex")
        out["flex_nodes_reference"] = conversion_of(flex_path)["flex_nodes"]
        flex = DeviceTrainer(flex_path, flex_spec)
        flex.set_params(weights, anchor=True)
        out["flex_step"] = median_seconds(lambda: flex.train_step(batch, settings), repeats=300, warmup=20)
    variables = [tf.Variable(a) for a in weights.arrays()]
    anchor = [tf.constant(a) for a in weights.arrays()]
    tensors = {k: tf.constant(v) for k, v in batch.batch().items()}
    masks = {g: float(g in settings.trainable) for g in ("tables", "dense", "private")}

    @tf.function
    def tf_step(batch):
        updated, loss = train_step(spec, [v.read_value() for v in variables], batch, settings.lr, settings.pairwise, anchor,
                                   settings.elastic, masks)
        for var, new in zip(variables, updated):
            var.assign(new)
        return loss

    out["tf_step"] = median_seconds(lambda: tf_step(tensors).numpy(), repeats=300, warmup=20)
    return out


def _memory(root: Path, steps: int, runtime: str) -> dict:
    """Peak RSS of fine-tuning ``steps`` SGD steps in ``runtime`` (tflite or tf), beyond the imports."""
    import tensorflow as tf

    cfg = FinetuneConfig()
    cloud, _ = load_model(root / "model")
    spec = cfg.program_spec(cloud)
    path = export(spec, root / "tflite", cfg.batch_size, cfg.ops)
    batch, weights, settings = _batch(spec, cfg.batch_size, 2), init_params(spec, 0), cfg.step
    baseline = peak_rss_mb()
    if runtime == "tflite":
        trainer = DeviceTrainer(path, spec)
        trainer.set_params(weights, anchor=True)
        for _ in range(steps):
            trainer.train_step(batch, settings)
    else:
        variables = [tf.Variable(a) for a in weights.arrays()]

        @tf.function
        def step(batch):
            updated, loss = train_step(spec, [v.read_value() for v in variables], batch, settings.lr)
            for var, new in zip(variables, updated):
                var.assign(new)
            return loss

        for _ in range(steps):
            step(batch.batch())
    return {"baseline_mb": baseline, "peak_mb": peak_rss_mb()}


def _tree_mb(path: Path) -> float | None:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20 if path.is_dir() else None


def _install_sizes() -> tuple[float | None, float | None]:
    """Disk size of the tflite_runtime package (``.venv-device``) and of the tensorflow package (this environment)."""
    import tensorflow as tf

    device = next(iter((REPO / ".venv-device" / "lib").glob("python3*/site-packages/tflite_runtime")), None)
    return (_tree_mb(device) if device else None), _tree_mb(Path(tf.__file__).parent)


def run(size: str) -> list[Figure]:
    scale = QUICK if size == "quick" else FULL
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        global_bytes = in_fresh_process(_setup, scale, root)
        reports = {arm: {k: np.asarray(v) for k, v in report.items()}
                   for arm, report in in_fresh_process(_reports, scale, root).items()}
        steps = {name: in_fresh_process(_steps, root, name) for name in ("mean", "attention")}
        r = reports[CODA.name]
        median_steps = int(np.median(r["steps"]))
        mem = {name: in_fresh_process(_memory, root, median_steps, name) for name in ("tflite", "tf")}
    runtime_mb, tensorflow_mb = in_fresh_process(_install_sizes)
    n = len(r["user_id"])
    down = r["submodel_bytes"] + r["candidate_bytes"]
    classified = r["filter_path"] == "classifier"
    grow = {k: v["peak_mb"] - v["baseline_mb"] for k, v in mem.items()}
    where = f"median of {n} device users, coda arm, default [filter]/[finetune]"
    mean_s, att_s = steps["mean"], steps["attention"]
    return [
        Figure(BENCH, "TFLite training step, builtin ops vs Flex (mean model, batch 32)", mean_s["builtin_step"] * 1e3, "ms",
               "the same step with TF's ReluGrad through the Flex delegate", mean_s["flex_step"] * 1e3,
               note=f"median of 300; Flex nodes: builtin program {sum(mean_s['flex_nodes'].values())}, "
                    f"reference {sum(mean_s['flex_nodes_reference'].values())}"),
        Figure(BENCH, "TFLite training step, builtin ops vs TF (mean model, batch 32)", mean_s["builtin_step"] * 1e3, "ms",
               "TF tf.function step (same model, weights, batch)", mean_s["tf_step"] * 1e3, note="median of 300"),
        Figure(BENCH, "TFLite training step, builtin ops vs TF (attention model, batch 32)", att_s["builtin_step"] * 1e3, "ms",
               "TF tf.function step (same model, weights, batch)", att_s["tf_step"] * 1e3,
               note=f"median of 300; Flex nodes: {sum(att_s['flex_nodes'].values())}"),
        Figure(BENCH, ".tflite size, mean model (item capacity 4096, category 256)", mean_s["tflite_bytes"] / 1e6, "MB",
               "its weights as float32 arrays", mean_s["weight_bytes"] / 1e6),
        Figure(BENCH, ".tflite size, attention model (item capacity 4096, category 256)", att_s["tflite_bytes"] / 1e6, "MB",
               "its weights as float32 arrays", att_s["weight_bytes"] / 1e6),
        *([Figure(BENCH, "device runtime install size: tflite_runtime package", runtime_mb, "MB",
                  "the tensorflow package", tensorflow_mb, note="disk size of the installed package folders")]
          if runtime_mb is not None else []),  # no .venv-device here (make venv-device builds it)
        Figure(BENCH, "coda device time (filter + fine-tuning)", float(np.median(reports[CODA.name]["seconds"])), "s",
               "local device time, same devices", float(np.median(reports[LOCAL.name]["seconds"])), note=where),
        Figure(BENCH, "submodel download per device", float(np.median(r["submodel_bytes"])) / 1e3, "kB",
               "the whole global model", global_bytes / 1e3, note=f"{where}; rows: median {np.median(r['item_rows']):.0f} items"),
        Figure(BENCH, "bytes down per device (submodel + candidates)", float(np.median(down)) / 1e3, "kB",
               "the whole global model", global_bytes / 1e3, note=f"{where}; median {np.median(r['candidates']):.0f} candidates"),
        Figure(BENCH, "sample classifier time per device", float(np.median(r["filter_seconds"])), "s",
               "fine-tuning time of the same devices", float(np.median(r["finetune_seconds"])),
               note=f"{where}; {int(classified.sum())}/{n} took the classifier path"),
        Figure(BENCH, f"fine-tuning peak memory ({median_steps} steps)", grow["tflite"], "MB", "the same steps in TF", grow["tf"],
               note="RSS growth beyond the imports, fresh process each"),
    ]
