"""The function every Ray Train worker runs: TempMe's recipe, data-parallel.

Each worker builds the encoder (frozen base + trainable adapter), wraps both towers in
``DistributedDataParallel`` (gloo on CPU, NCCL on GPU: Ray Train sets up the process group), and
for every step of every epoch trains on its share of the global batch (``pipeline.training.plan``),
decoded by Ray Data as it goes (``pipeline.training.stream``). The loss is the symmetric InfoNCE over
the global batch (features all-gathered), so the recipe means the same on any number of workers.

Checkpoints go to Ray Train (``ray.train.report``) at the end of every epoch and every
``train.checkpoint_steps`` steps; a restarted worker group, or a rerun of the same command, gets
the latest one from ``ray.train.get_checkpoint()`` and continues from its step.
"""

from __future__ import annotations

import logging
import sys
import tempfile
import time

from tomeray.models.errors import link_note
from tomeray.pipeline.core.errors_table import error_row
from tomeray.pipeline.training.plan import augment_seed, epoch_batches, lr_factor, worker_share
from tomeray.pipeline.training.state import Progress, load_checkpoint, save_checkpoint
from tomeray.pipeline.training.stream import StepBatch, assemble_steps, decode_stream

__all__ = ["checkpoint_name", "train_worker"]


def checkpoint_name(progress: Progress) -> str:
    """Checkpoint folders sort in training order: epoch, then optimisation step."""
    return f"checkpoint-e{progress.epoch:03d}-s{progress.global_step:08d}"


class Worker:
    """One training worker's model, optimizer and data (built from the driver's ``config``)."""

    def __init__(self, config: dict):
        import ray.train
        import ray.train.torch
        import torch
        from tomeray.models.tempme import VideoModelConfig, VideoTextModel, create_video_encoder
        from tomeray.operators.clip_decode import ClipDecoder

        # Ray Train narrates every report (on a logger under the root), Ray Data every epoch's dataset,
        # open_clip every model it builds, all at INFO: a worker keeps warnings only
        for name in ("", "ray.train", "ray.data"):
            logging.getLogger(name).setLevel(logging.WARNING)
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.config, self.recipe = config, config["train"]
        self.device = ray.train.torch.get_device()
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        else:
            torch.set_num_threads(config["threads"])
        self.encoder = create_video_encoder(VideoModelConfig(**config["model"]), device=str(self.device),
                                            precision=config["precision"])
        self.encoder.trainable_parameters()
        # a ClipMe block that merges nothing across clips never uses its temporal embedding, and DDP
        # needs a gradient for every parameter it synchronises
        for step in self.encoder.plan:
            if step.frames_per_clip > 1 and not step.cross_r:
                self.encoder.tvpt.blocks[step.layer].temporal.requires_grad_(False)
        self.params = [p for p in self.encoder.adapter_parameters().values() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=self.recipe["lr"],
                                           weight_decay=self.recipe["weight_decay"])
        self.progress = Progress()
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                self.progress = load_checkpoint(folder, self.encoder, self.optimizer)
            self.say(f"resumed from the checkpoint at epoch {self.progress.epoch + 1}, step "
                     f"{self.progress.step} ({self.progress.global_step} steps done)")
        self.model = VideoTextModel(self.encoder)
        if self.world > 1:  # after loading: DDP starts every worker from rank 0's tensors
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.model, device_ids=ids)
        # fp16 needs loss scaling; bf16 and fp32 do not
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.encoder.precision == "fp16")
        size, frames = self.encoder.image_size, self.encoder.num_frames
        sampling = config["sampling"]
        self.train_decoder = ClipDecoder(size, frames, sampling["fps"], sampling["strict"],
                                         sampling["decode_threads"], self.recipe["augment"])
        self.val_decoder = ClipDecoder(size, frames, sampling["fps"], sampling["strict"],
                                       sampling["decode_threads"], None)
        self.clip_shape = (frames, size, size, 3)
        self.bar = None
        self.pending_errors: list[dict] = []  # decode errors not yet shared with the other workers

    def say(self, line: str) -> None:
        # not print(): Ray Train routes print through its logger as well, and the line would show twice
        if self.rank == 0:
            sys.stdout.write(f"[train] {line}\n")
            sys.stdout.flush()

    # ---------------------------------------------------------------------------------- collectives

    def gather_objects(self, obj) -> list:
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def _global(self, x):
        from tomeray.models.tempme import all_gather_with_grad

        return all_gather_with_grad(x)

    # ---------------------------------------------------------------------------------- training

    def epoch_rows(self, epoch: int) -> tuple[list[int], dict, dict, list[dict]]:
        """This worker's planned steps of ``epoch`` from the current step on: (steps, rows by
        (step, slot), slots per step, the rows to decode)."""
        cfg = self.config
        batches = epoch_batches(len(cfg["pair_clip"]), self.recipe["batch_size"], self.recipe["seed"], epoch)
        bad = {e["item"]: e for e in self.progress.errors if e["stage"] == "decode"}
        steps, rows, slots, todo = [], {}, {}, []
        for step in range(self.progress.step, len(batches)):
            share = worker_share(batches[step], self.rank, self.world)
            steps.append(step)
            slots[step] = len(share)
            for slot, pair in enumerate(share):
                clip = cfg["clips"][cfg["pair_clip"][pair]]
                row = {**clip, "caption": cfg["pair_caption"][pair], "step": step, "slot": slot,
                       "seed": augment_seed(self.recipe["seed"], epoch, int(pair))}
                rows[(step, slot)] = row
                if clip["key"] in bad:  # known to fail: not decoded again, stays an invalid slot
                    rows[(step, slot)] = {**row, "skip_type": bad[clip["key"]]["error_type"],
                                          "skip_message": bad[clip["key"]]["message"]}
                else:
                    todo.append(row)
        return steps, rows, slots, todo

    def train_step(self, batch: StepBatch) -> tuple[float, int] | None:
        """One optimisation step on the global batch; None when no clip of it decoded (skipped on
        every worker alike)."""
        import torch
        from tomeray.models.frames import normalize_frames
        from tomeray.models.tempme import contrastive_loss

        valid = torch.from_numpy(batch.valid)
        flags = self._global(valid.float()[:, None].to(self.device))[:, 0] > 0.5
        n_valid = int(flags.sum())
        if n_valid == 0:
            return None
        enc = self.encoder
        # uint8 to the device, normalised there: a quarter of the bytes of float frames
        frames = normalize_frames(torch.from_numpy(batch.frames).to(self.device), enc.mean, enc.std)
        mask = torch.from_numpy(batch.mask)
        mask[~valid] = True  # failed slots run on zero frames and are left out of the loss
        tokens = enc.tokenize(batch.captions, self.recipe["context_length"]).to(self.device)
        video, text = self.model(frames, mask.to(self.device), tokens)
        loss = contrastive_loss(video, text, gather=lambda x: self._global(x)[flags])
        lr = self.recipe["lr"] * lr_factor(self.progress.global_step, self.config["total_steps"],
                                           self.config["warmup_steps"])
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.recipe["grad_clip"] > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.recipe["grad_clip"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach()), n_valid

    def run_epoch(self, epoch: int, n_steps: int) -> None:
        p = self.progress
        steps, rows, slots, todo = self.epoch_rows(epoch)
        stream = decode_stream(todo, self.train_decoder, self.config["tasks"], self.config["max_blocks"])
        self.open_bar(epoch, n_steps)
        every = self.recipe["checkpoint_steps"]
        last = time.perf_counter()
        for batch in assemble_steps(stream, steps, rows, slots, self.clip_shape):
            p.wait_s += time.perf_counter() - last
            self.record_failures(batch.failures)
            result = self.train_step(batch)
            # wall time since the previous step: waiting for decoded clips counts (throughput, not compute)
            now = time.perf_counter()
            elapsed, last = now - last, now
            p.seconds += elapsed
            p.step = batch.step + 1
            if result is not None:
                loss, clips = result
                p.global_step += 1
                p.loss_sum, p.loss_steps, p.clips = p.loss_sum + loss, p.loss_steps + 1, p.clips + clips
                self.show(epoch, n_steps, loss, clips / max(elapsed, 1e-9))
            if every and p.global_step % every == 0 and result is not None and p.step < n_steps:
                self.checkpoint({"kind": "step"})
                last = time.perf_counter()  # checkpoint time is neither training nor waiting
        self.close_bar()

    # ---------------------------------------------------------------------------------- progress

    def open_bar(self, epoch: int, n_steps: int) -> None:
        if self.rank == 0 and self.config["progress"]:
            from ray.experimental.tqdm_ray import tqdm

            self.bar = tqdm(total=n_steps, desc=f"epoch {epoch + 1}/{self.recipe['epochs']}", unit="step")
            self.bar.update(self.progress.step)

    def show(self, epoch: int, n_steps: int, loss: float, clips_per_s: float) -> None:
        text = f"epoch {epoch + 1}/{self.recipe['epochs']} loss {loss:.4f} {clips_per_s:.1f} clips/s"
        if self.bar is not None:
            self.bar.set_description(text)
            self.bar.update(1)
        elif self.rank == 0 and (self.progress.step % max(1, n_steps // 10) == 0
                                 or self.progress.step == n_steps):
            self.say(f"{text} (step {self.progress.step}/{n_steps})")

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # ---------------------------------------------------------------------------------- errors, checkpoints

    def record_failures(self, failures: list[dict]) -> None:
        rows = [error_row(f["key"], "decode", f["error_type"], f["message"] + link_note(f["path"]),
                          input=self.config["source"], path=f["path"])
                for f in failures if f["error_type"] != "WorkerLost"]
        self.pending_errors.extend(rows)

    def checkpoint(self, metrics: dict) -> None:
        """Share every worker's new error rows, then hand a checkpoint to Ray Train (all workers
        report; rank 0 writes the files)."""
        import ray.train

        for rows in self.gather_objects(self.pending_errors):
            self.progress.add_errors(rows)
        self.pending_errors = []
        p = self.progress
        metrics = {**metrics, "epoch": p.epoch, "step": p.step, "global_step": p.global_step}
        name = checkpoint_name(p)
        if self.rank != 0:
            ray.train.report(metrics, checkpoint_dir_name=name)
            return
        with tempfile.TemporaryDirectory() as folder:
            save_checkpoint(folder, self.encoder, self.optimizer, p, name=self.config["adapter_name"],
                            extra=self.config["adapter_extra"])
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                             checkpoint_dir_name=name)


def train_worker(config: dict) -> None:
    """``train_loop_per_worker`` of the ``TorchTrainer`` (see the module docstring)."""
    from tomeray.pipeline.training.validation import validate

    worker = Worker(config)
    p, epochs = worker.progress, config["train"]["epochs"]
    n_steps = config["steps_per_epoch"]
    while p.epoch < epochs:
        if p.step < n_steps:
            worker.run_epoch(p.epoch, n_steps)
        started = time.perf_counter()
        val = validate(worker) if config["val_clips"] else None
        record = {"epoch": p.epoch + 1, "train_loss": p.loss_sum / p.loss_steps if p.loss_steps else None,
                  "steps": p.loss_steps, "clips": p.clips,
                  "clips_per_s": p.clips / p.seconds if p.seconds else 0.0,
                  "train_s": round(p.seconds, 3), "data_wait_s": round(p.wait_s, 3),
                  "val_s": round(time.perf_counter() - started, 3), "val": val}
        p.history.append(record)
        loss = "n/a" if record["train_loss"] is None else f"{record['train_loss']:.4f}"
        summary = f" val t2v R@1 {val['t2v']['R@1']:.1f}" if val else ""
        worker.say(f"epoch {p.epoch + 1}/{epochs}: train loss {loss}, {record['clips_per_s']:.1f} "
                   f"clips/s{summary}")
        p.start_epoch(p.epoch + 1)
        worker.checkpoint({"kind": "epoch"})
