"""Training checkpoints: the adapter, the optimizer and the progress come back exactly, and the
checkpoint's adapter file is a usable adapter."""

from __future__ import annotations

import torch
from tomeray.models.tempme import VideoModelConfig, contrastive_loss, create_video_encoder
from tomeray.pipeline.training.state import ADAPTER_FILE, Progress, load_checkpoint, save_checkpoint

MODEL = VideoModelConfig(arch="ViT-S-32", pretrained="none", preset="none", num_frames=2)


def one_step(encoder, optimizer):
    frames = torch.randn(2, 2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    tokens = encoder.tokenize(["a red ball", "a blue cube"], 16)
    loss = contrastive_loss(encoder.encode_video(frames, grad=True), encoder.encode_text(tokens, grad=True))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


def test_a_checkpoint_restores_adapter_optimizer_and_progress(tmp_path):
    encoder = create_video_encoder(MODEL, device="cpu")
    params = encoder.trainable_parameters()
    optimizer = torch.optim.AdamW(params.values(), lr=1e-2, weight_decay=0.2)
    one_step(encoder, optimizer)
    progress = Progress(epoch=1, step=3, global_step=7, loss_sum=4.5, loss_steps=3, clips=24, seconds=1.5,
                        history=[{"epoch": 1, "train_loss": 2.0, "val": None}])
    progress.add_errors([{"item": "a.avi", "stage": "decode", "error_type": "E", "message": "m"}] * 2)
    save_checkpoint(tmp_path, encoder, optimizer, progress, name="ft", extra={"recipe": {"lr": 1e-2}})

    restored = create_video_encoder(MODEL, device="cpu")
    again = torch.optim.AdamW(restored.trainable_parameters().values(), lr=1e-2, weight_decay=0.2)
    assert load_checkpoint(tmp_path, restored, again) == progress and len(progress.errors) == 1
    for name, p in restored.adapter_parameters().items():
        assert torch.equal(p, params[name].detach()), name
    state, state_again = optimizer.state_dict()["state"], again.state_dict()["state"]
    assert state.keys() == state_again.keys()
    assert all(torch.equal(state[k]["exp_avg"], state_again[k]["exp_avg"]) for k in state)
    one_step(encoder, optimizer)  # training continues identically from the restored state
    one_step(restored, again)
    for name, p in restored.adapter_parameters().items():
        assert torch.allclose(p, params[name].detach(), atol=1e-7), name
    assert restored.identity()["adapter"]["name"] == "ft"  # the checkpoint's adapter file, loaded
    assert restored.adapter.path == str((tmp_path / ADAPTER_FILE).resolve())
