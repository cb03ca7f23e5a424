"""``tomeray train``: fine-tune TempMe's trainable parts (LoRA in both towers, temporal embeddings) on
video-caption pairs with Ray Train.

    data -> clips + captions (errors for unusable rows) -> train / val split -> TorchTrainer over
    train.workers workers (pipeline.training.loop), clips decoded by Ray Data as they train ->
    checkpoints (every epoch, every train.checkpoint_steps steps) -> adapter, metrics, manifest

* Resume: Ray Train keeps the checkpoints under ``<out>/checkpoints`` with a fixed run name, so the
  same command rerun after a crash or a killed driver continues from the latest checkpoint (Ray
  Train's own restore); a worker that dies is replaced and the group restarts from that checkpoint
  (``train.max_failures`` times) within the same run.
* The manifest pins the base model, the data and the recipe: a rerun with other settings is refused
  with the list of differences.
* Cluster: a local Ray cluster by default, or ``--address`` / ``RAY_ADDRESS``. On a cluster of several
  machines the output directory must be on storage every node can reach (Ray Train writes the
  checkpoints from the workers).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from tomeray.models.errors import ConfigError, InputError, TomerayError, one_line
from tomeray.pipeline.core.atomic import atomic_write_json, atomic_write_with
from tomeray.pipeline.core.config import load_config, save_config
from tomeray.pipeline.core.output import new_run_id
from tomeray.pipeline.training.config import TrainConfig
from tomeray.pipeline.training.data import Clip, load_clips, train_val_split
from tomeray.pipeline.training.layout import RUN_NAME, TrainLayout
from tomeray.pipeline.training.plan import steps_per_epoch, warmup_steps
from tomeray.pipeline.training.state import ADAPTER_FILE, read_progress
from tomeray.pipeline.video.job import model_facts

log = logging.getLogger(__name__)

__all__ = ["TrainSummary", "TrainingFailedError", "run_train"]


class TrainingFailedError(TomerayError):
    """Training stopped with an error its workers could not recover from."""


@dataclass
class TrainSummary:
    out: str
    run_id: str
    weights_id: str
    epochs: list[dict]  # metrics.json's records, every epoch so far
    epochs_total: int
    train_pairs: int
    train_clips: int
    val_clips: int
    workers: int
    device: str  # cpu | gpu
    resumed_from: str | None  # the checkpoint this run continued from
    adapter_path: str | None
    adapter_id: str | None
    seconds: float
    already_done: bool = False
    failures: list[dict] = field(default_factory=list)  # current error rows

    @property
    def complete(self) -> bool:
        return len(self.epochs) >= self.epochs_total

    @property
    def exit_code(self) -> int:
        return 130 if not self.complete else (1 if self.failures else 0)


def _check_recipe(cfg: TrainConfig) -> None:
    t = cfg.train
    for name, value, low in (("epochs", t.epochs, 1), ("batch_size", t.batch_size, 1),
                             ("workers", t.workers, 1), ("context_length", t.context_length, 2),
                             ("val_batch_size", t.val_batch_size, 1)):
        if value < low:
            raise ConfigError(f"train.{name} must be at least {low}; got {value}")
    if t.batch_size < t.workers:
        raise ConfigError(f"train.batch_size={t.batch_size} is smaller than train.workers={t.workers}: every "
                          "worker needs a share of each global batch")
    if t.lr <= 0 or t.weight_decay < 0 or t.grad_clip < 0 or t.cpus_per_worker <= 0:
        raise ConfigError("train.lr and train.cpus_per_worker must be positive, train.weight_decay and "
                          "train.grad_clip not negative")


def _pairs(clips: list[Clip]) -> tuple[list[int], list[str]]:
    pair_clip, pair_caption = [], []
    for i, clip in enumerate(clips):
        pair_clip += [i] * len(clip.captions)
        pair_caption += clip.captions
    return pair_clip, pair_caption


def _worker_resources(cfg: TrainConfig) -> tuple[float, float]:
    """(CPUs, GPUs) per worker: GPU workers when the cluster has GPUs (unless inference.device=cpu)."""
    import ray

    gpus = cfg.train.gpus_per_worker
    if gpus is None:
        has_gpus = float(ray.cluster_resources().get("GPU", 0.0)) > 0
        gpus = 1.0 if has_gpus and cfg.inference.device != "cpu" else 0.0
    return cfg.train.cpus_per_worker, float(gpus)


def _fit(cfg: TrainConfig, layout: TrainLayout, loop_config: dict, cpus: float, gpus: float):
    """Run the TorchTrainer to the end; returns its result."""
    os.environ["RAY_TRAIN_V2_ENABLED"] = "1"  # this code is written for Ray Train's V2 API
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.train.v2._internal.constants import is_v2_enabled
    from tomeray.pipeline.training.loop import train_worker

    if not is_v2_enabled():
        raise ConfigError("Ray Train's V2 API is off in this process (ray.train was imported with "
                          "RAY_TRAIN_V2_ENABLED=0); unset it")
    resources = {"CPU": cpus, **({"GPU": gpus} if gpus else {})}
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if gpus else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.train.workers, use_gpu=bool(gpus),
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=RUN_NAME, storage_path=str(layout.checkpoints_dir.resolve()),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=max(1, cfg.train.keep_checkpoints)),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            logging_config=ray.train.LoggingConfig(log_level="WARNING")),
    )
    try:
        return trainer.fit()
    except ray.train.TrainingFailedError as e:
        raise TrainingFailedError(f"training failed: {one_line(e, limit=600)}; rerun the same command to "
                                  "continue from the last checkpoint") from None


def _loop_config(cfg: TrainConfig, clips, train: list[Clip], val: list[Clip], layout: TrainLayout,
                 threads: int) -> dict:
    pair_clip, pair_caption = _pairs(train)
    per_epoch = steps_per_epoch(len(pair_clip), cfg.train.batch_size)
    total = per_epoch * cfg.train.epochs
    return {
        "model": dataclasses.asdict(cfg.model), "precision": cfg.inference.precision, "threads": threads,
        "train": dataclasses.asdict(cfg.train), "sampling": dataclasses.asdict(cfg.sampling),
        "tasks": cfg.ray.tasks, "max_blocks": cfg.ray.max_blocks, "progress": cfg.ray.progress,
        "source": clips.source, "clips": [c.item() for c in train], "pair_clip": pair_clip,
        "pair_caption": pair_caption, "val_clips": [c.item() for c in val],
        "val_captions": [(i, text) for i, c in enumerate(val) for text in c.captions],
        "steps_per_epoch": per_epoch, "total_steps": total,
        "warmup_steps": warmup_steps(total, cfg.train.warmup),
        "adapter_name": f"tempme-{layout.root.resolve().name}",
        "adapter_extra": {"recipe": cfg.recipe(), "data": {"source": clips.source, "digest": clips.digest()}},
    }


def _publish(layout: TrainLayout, checkpoint: Path) -> tuple[list[dict], list[dict]]:
    """Copy the final checkpoint's adapter into the output; returns its (epoch records, decode errors)."""
    progress = read_progress(checkpoint)
    atomic_write_with(layout.adapter_path, lambda tmp: shutil.copyfile(checkpoint / ADAPTER_FILE, tmp))
    return progress.history, progress.errors


def _adapter_id(path: Path) -> str:
    from safetensors.torch import load_file
    from tomeray.models.tempme import adapter_digest, read_adapter_metadata

    read_adapter_metadata(path)  # a readable adapter, or a clear error
    return adapter_digest(load_file(str(path)))


def run_train(data: str, out: str | Path, overrides: list[str] | tuple[str, ...] = (),
              address: str | None = None, *, config: TrainConfig | None = None) -> TrainSummary:
    """Train an adapter on ``data`` into ``out`` (created, or resumed). See the module docstring."""
    started = time.perf_counter()
    cfg = config if config is not None else load_config(TrainConfig, "train", list(overrides))
    _check_recipe(cfg)
    layout = TrainLayout(out)
    clips = load_clips(data, cfg.data, ("train", "val"))
    train, val = train_val_split(clips, cfg.data)
    pair_clip, _ = _pairs(train)
    if not pair_clip:
        raise InputError(f"'{data}' has no usable training pairs ({len(clips.errors)} rows could not be "
                         "used; "
                         f"first: {clips.errors[0]['message'] if clips.errors else 'no rows'})")
    if len(pair_clip) < cfg.train.workers:
        raise InputError(f"{len(pair_clip)} training pairs cannot be shared by "
                         f"train.workers={cfg.train.workers} workers; use fewer workers")
    identity, weights_id, _, _ = model_facts(cfg.model, with_text=True)  # both towers train
    header = {"model": identity, "weights_id": weights_id, "recipe": cfg.recipe(),
              "data": {"source": clips.source, "format": clips.format, "digest": clips.digest(),
                       "train_clips": len(train), "train_pairs": len(pair_clip), "val_clips": len(val)}}
    manifest = layout.open(json.loads(json.dumps(header, default=str)))
    save_config(cfg, layout.config_path)
    run_id = new_run_id()
    layout.write_errors(clips.errors, f"{run_id}-load")
    if weights_id.startswith("random-init"):
        log.warning("base weights are RANDOM (%s): the adapter is for smoke tests, not retrieval", weights_id)

    summary = TrainSummary(str(layout.root), run_id, weights_id, [], cfg.train.epochs, len(pair_clip),
                           len(train), len(val), cfg.train.workers, "cpu", None, None, None, 0.0)
    if manifest.get("status") == "complete" and layout.adapter_path.is_file():
        summary.already_done = True
    else:
        resumed = layout.latest_checkpoint()
        if resumed is not None:
            p = read_progress(resumed)
            summary.resumed_from = (f"{resumed.name} (epoch {p.epoch + 1}, step {p.step}, "
                                    f"{p.global_step} steps done)")
            print(f"resuming from checkpoint {summary.resumed_from}", flush=True)
        from tomeray.pipeline.core.ray_session import init_ray

        init_ray(address or cfg.ray.address, num_cpus=cfg.ray.num_cpus, dashboard=True)
        cpus, gpus = _worker_resources(cfg)
        summary.device = "gpu" if gpus else "cpu"
        threads = cfg.train.threads or max(1, round(cpus))
        loop_config = _loop_config(cfg, clips, train, val, layout, threads)
        print(f"training on {len(pair_clip)} pairs of {len(train)} clips ({len(val)} validation clips), "
              f"{cfg.train.workers} {summary.device.upper()} workers ({'nccl' if gpus else 'gloo'}), "
              f"{cfg.train.epochs} epochs of {loop_config['steps_per_epoch']} steps", flush=True)
        result = _fit(cfg, layout, loop_config, cpus, gpus)
        final = Path(result.checkpoint.path) if result.checkpoint is not None else layout.latest_checkpoint()
        if final is None:
            raise TrainingFailedError("training ended without a checkpoint; rerun the same command")
        history, decode_errors = _publish(layout, final)
        layout.write_errors(decode_errors, f"{run_id}-decode")
        status = "complete" if len(history) >= cfg.train.epochs else "incomplete"
        atomic_write_json(layout.metrics_path, {"epochs": history, "weights_id": weights_id,
                                                "random_weights": weights_id.startswith("random-init")})
        manifest = layout.finish(manifest, status=status, epochs_done=len(history))
    has_metrics = layout.metrics_path.is_file()
    metrics = json.loads(layout.metrics_path.read_text(encoding="utf-8")) if has_metrics else {}
    summary.epochs = metrics.get("epochs", [])
    if layout.adapter_path.is_file():
        summary.adapter_path, summary.adapter_id = str(layout.adapter_path), _adapter_id(layout.adapter_path)
    summary.failures = layout.read_errors().to_pylist()
    summary.seconds = time.perf_counter() - started
    layout.write_run_record(run_id, dataclasses.asdict(summary))
    return summary

