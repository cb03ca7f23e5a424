"""TempMe's objective: symmetric InfoNCE (logit scale 100), its global batch over 2 real
torch.distributed workers (gloo), and training steps through both towers."""

from __future__ import annotations

import math
import multiprocessing
import socket

import decord
import pytest
import torch
from tomeray.models.clip import load_clip
from tomeray.models.errors import InputError
from tomeray.models.frames import preprocess_frames, sample_frame_indices
from tomeray.models.tempme import (
    LOGIT_SCALE,
    MergeSchedule,
    TempMeEncoder,
    VideoTextModel,
    all_gather_with_grad,
    contrastive_loss,
)

SPLITS = ([0, 1, 2], [3, 4])  # uneven shards: a last batch need not divide by the worker count


def brute_force_loss(video: torch.Tensor, text: torch.Tensor, scale: float = 100.0) -> float:
    v = [x / x.norm() for x in video.double()]
    t = [x / x.norm() for x in text.double()]
    n = len(v)
    t2v = sum(-math.log(math.exp(scale * float(t[i] @ v[i])) / sum(math.exp(scale * float(t[i] @ v[j]))
                                                                   for j in range(n))) for i in range(n))
    v2t = sum(-math.log(math.exp(scale * float(v[i] @ t[i])) / sum(math.exp(scale * float(v[i] @ t[j]))
                                                                   for j in range(n))) for i in range(n))
    return (t2v + v2t) / (2 * n)


def test_tempme_objective_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    video, text = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    assert LOGIT_SCALE == 100.0
    loss = contrastive_loss(video, text)
    assert loss.item() == pytest.approx(brute_force_loss(video, text), rel=1e-5)
    assert contrastive_loss(text, video).item() == pytest.approx(loss.item(), rel=1e-6)  # symmetric
    # unnormalised inputs are normalised; matched pairs far apart from the rest give ~0 loss
    assert contrastive_loss(3 * video, text).item() == pytest.approx(loss.item(), rel=1e-5)
    assert contrastive_loss(torch.eye(4), torch.eye(4) * 2).item() < 1e-6
    with pytest.raises(InputError, match=r"\(B, D\)"):
        contrastive_loss(video, text[:4])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _features(weight: torch.Tensor, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A stand-in for the two towers: linear maps of fixed inputs, so gradients are easy to compare."""
    return inputs[:, 0] @ weight, inputs[:, 1] @ weight


def _worker(rank: int, world: int, port: int, weight: torch.Tensor, inputs: torch.Tensor, queue) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        w = weight.clone().requires_grad_(True)
        video, text = _features(w, inputs[SPLITS[rank]])
        loss = contrastive_loss(video, text, gather=all_gather_with_grad)
        loss.backward()
        grad = w.grad.clone()
        dist.all_reduce(grad)  # what DistributedDataParallel does: average the workers' gradients
        queue.put((rank, loss.item(), (grad / world).numpy()))
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_tempme_objective_two_workers_see_the_global_batch():
    """Two gloo workers holding 3 and 2 pairs: the same loss as one worker on all 5 pairs, and after
    averaging (as DDP does) the same gradient."""
    g = torch.Generator().manual_seed(1)
    weight, inputs = torch.randn(6, 4, generator=g), torch.randn(5, 2, 6, generator=g)
    w = weight.clone().requires_grad_(True)
    single = contrastive_loss(*_features(w, inputs))
    single.backward()
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    port = _free_port()
    workers = [context.Process(target=_worker, args=(r, 2, port, weight, inputs, queue)) for r in range(2)]
    for p in workers:
        p.start()
    results = sorted(queue.get(timeout=100) for _ in workers)
    for p in workers:
        p.join(timeout=30)
        assert p.exitcode == 0
    for _, loss, grad in results:
        assert loss == pytest.approx(single.item(), rel=1e-6)
        torch.testing.assert_close(torch.from_numpy(grad), w.grad, atol=1e-6, rtol=1e-5)
    assert all_gather_with_grad(weight) is weight  # no process group: the local batch is the batch


def test_tempme_objective_training_steps_lower_the_loss(opencv_data):
    """A few AdamW steps on the trainable parts only, through merging (ClipMe at half depth) and both
    towers: the loss on the batch falls, and only TVPt_* tensors change."""
    clip = load_clip("ViT-S-32-alt", "none")
    schedule = MergeSchedule(clip_layers=[0.5], frames_per_clip=[2])
    encoder = TempMeEncoder(clip.visual, "custom", schedule=schedule, num_frames=2, text=clip.text)
    videos = []
    for name in ("vtest.avi", "Megamind.avi", "tree.avi"):
        reader = decord.VideoReader(str(opencv_data / name), ctx=decord.cpu(0))
        idx = sample_frame_indices(len(reader), reader.get_avg_fps(), 2)
        videos.append(preprocess_frames(reader.get_batch(list(idx)).asnumpy(), 224))
    frames = torch.stack(videos)
    tokens = encoder.tokenize(["people walking in a hall", "a blue cartoon face", "a tree in the wind"],
                              context_length=32)
    frozen = {k: v.clone() for k, v in encoder.visual.state_dict().items()}
    model = VideoTextModel(encoder)
    params = encoder.trainable_parameters()
    optimizer = torch.optim.AdamW(params.values(), lr=1e-3, weight_decay=0.2)
    losses = []
    for _ in range(6):
        loss = contrastive_loss(*model(frames, None, tokens))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params.values(), 1.0)
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    assert all(torch.equal(frozen[k], v) for k, v in encoder.visual.state_dict().items())
