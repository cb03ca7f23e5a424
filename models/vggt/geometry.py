"""Camera geometry for VGGT outputs (PyTorch, any leading batch dimensions).

Conventions (the official ones):
- extrinsic (..., 3, 4) = [R | t] maps world to camera, OpenCV axes (x right, y down, z forward);
  the world frame is the first view's camera;
- intrinsic (..., 3, 3) in pixels, principal point at the image centre;
- pose encoding (..., 9) = translation t (3), quaternion of R as x, y, z, w (4),
  field of view of the height and of the width in radians (2).
"""

from __future__ import annotations

import numpy as np
import torch
from tomeray.models.errors import InputError
from torch import Tensor

# ----------------------------------------------------------------------------- rotations


def quat_to_mat(quat: Tensor) -> Tensor:
    """Quaternion (..., 4) as x, y, z, w -> rotation (..., 3, 3). Not required to be unit length:
    dividing by the squared norm makes q and c*q the same rotation."""
    x, y, z, w = quat.unbind(-1)
    s = 2.0 / (quat * quat).sum(-1)
    m = torch.stack(
        (
            1 - s * (y * y + z * z),
            s * (x * y - z * w),
            s * (x * z + y * w),
            s * (x * y + z * w),
            1 - s * (x * x + z * z),
            s * (y * z - x * w),
            s * (x * z - y * w),
            s * (y * z + x * w),
            1 - s * (x * x + y * y),
        ),
        dim=-1,
    )
    return m.reshape(*quat.shape[:-1], 3, 3)


def mat_to_quat(rot: Tensor) -> Tensor:
    """Rotation (..., 3, 3) -> unit quaternion (..., 4) as x, y, z, w with w >= 0.

    Uses the best conditioned of the four classic formulas (largest of 1 +- trace terms), so it is
    accurate for every rotation including 180 degree turns.
    """
    if rot.shape[-2:] != (3, 3):
        raise InputError(f"rotation matrices must be (..., 3, 3); got {tuple(rot.shape)}")
    m = rot.reshape(*rot.shape[:-2], 9)
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = m.unbind(-1)
    # 4 * (w^2, x^2, y^2, z^2)
    sq = torch.stack(
        (1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22), dim=-1
    ).clamp_min(0)
    # each row: the quaternion (w, x, y, z) times 4 * (that row's component)
    candidates = torch.stack(
        (
            torch.stack((sq[..., 0], m21 - m12, m02 - m20, m10 - m01), dim=-1),
            torch.stack((m21 - m12, sq[..., 1], m10 + m01, m02 + m20), dim=-1),
            torch.stack((m02 - m20, m10 + m01, sq[..., 2], m12 + m21), dim=-1),
            torch.stack((m10 - m01, m20 + m02, m21 + m12, sq[..., 3]), dim=-1),
        ),
        dim=-2,
    )
    best = sq.argmax(dim=-1)
    chosen = candidates.gather(-2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    wxyz = chosen / (2.0 * sq.gather(-1, best[..., None]).sqrt().clamp_min(1e-12))
    xyzw = torch.cat((wxyz[..., 1:], wxyz[..., :1]), dim=-1)
    xyzw = xyzw / xyzw.norm(dim=-1, keepdim=True)
    return torch.where(xyzw[..., 3:] < 0, -xyzw, xyzw)


# ----------------------------------------------------------------------------- pose encoding


def _image_hw(image_hw) -> tuple[float, float]:
    try:
        h, w = (float(v) for v in image_hw)
    except (TypeError, ValueError):
        raise InputError(f"image_hw must be (height, width); got {image_hw!r}") from None
    if h <= 0 or w <= 0:
        raise InputError(f"image_hw must be positive; got {image_hw!r}")
    return h, w


def pose_encoding_to_extri_intri(pose_enc: Tensor, image_hw) -> tuple[Tensor, Tensor]:
    """Pose encoding (..., 9) -> extrinsic (..., 3, 4) world-to-camera and intrinsic (..., 3, 3).

    A field of view of 0 (the head's ReLU can give it) yields an infinite focal length.
    """
    if pose_enc.shape[-1] != 9:
        raise InputError(f"pose encoding must be (..., 9); got {tuple(pose_enc.shape)}")
    H, W = _image_hw(image_hw)
    t, quat, fov_h, fov_w = pose_enc[..., :3], pose_enc[..., 3:7], pose_enc[..., 7], pose_enc[..., 8]
    extrinsic = torch.cat((quat_to_mat(quat), t[..., None]), dim=-1)
    intrinsic = torch.zeros(*pose_enc.shape[:-1], 3, 3, dtype=pose_enc.dtype, device=pose_enc.device)
    intrinsic[..., 0, 0] = (W / 2.0) / torch.tan(fov_w / 2.0)
    intrinsic[..., 1, 1] = (H / 2.0) / torch.tan(fov_h / 2.0)
    intrinsic[..., 0, 2] = W / 2
    intrinsic[..., 1, 2] = H / 2
    intrinsic[..., 2, 2] = 1.0
    return extrinsic, intrinsic


def extri_intri_to_pose_encoding(extrinsic: Tensor, intrinsic: Tensor, image_hw) -> Tensor:
    """extrinsic (..., 3, 4) and intrinsic (..., 3, 3) -> pose encoding (..., 9), float32."""
    if extrinsic.shape[-2:] not in ((3, 4), (4, 4)) or intrinsic.shape[-2:] != (3, 3):
        raise InputError(
            f"need extrinsic (..., 3, 4) and intrinsic (..., 3, 3); got {tuple(extrinsic.shape)}, "
            f"{tuple(intrinsic.shape)}"
        )
    H, W = _image_hw(image_hw)
    fov_h = 2 * torch.atan((H / 2) / intrinsic[..., 1, 1])
    fov_w = 2 * torch.atan((W / 2) / intrinsic[..., 0, 0])
    return torch.cat(
        (extrinsic[..., :3, 3], mat_to_quat(extrinsic[..., :3, :3]), fov_h[..., None], fov_w[..., None]),
        dim=-1,
    ).float()


def camera_to_world(extrinsic: Tensor) -> Tensor:
    """Invert world-to-camera [R | t] (..., 3, 4) into camera-to-world [R^T | -R^T t] (..., 3, 4)."""
    R, t = extrinsic[..., :3, :3], extrinsic[..., :3, 3:]
    Rt = R.transpose(-1, -2)
    return torch.cat((Rt, -Rt @ t), dim=-1)


# ----------------------------------------------------------------------------- depth -> points


def unproject_depth_map_to_point_map(depth, extrinsic, intrinsic):
    """Depth (..., H, W) or (..., H, W, 1) -> world points (..., H, W, 3).

    extrinsic (..., 3, 4) world-to-camera, intrinsic (..., 3, 3), with the same leading
    dimensions as the depth. Pixel (u, v) is the centre convention of the official code
    (u = column index). NumPy inputs give a NumPy float32 result.
    """
    as_numpy = isinstance(depth, np.ndarray)
    depth, extrinsic, intrinsic = (torch.as_tensor(a) for a in (depth, extrinsic, intrinsic))
    if depth.dim() >= 3 and depth.shape[-1] == 1 and depth.dim() == extrinsic.dim() + 1:
        depth = depth[..., 0]
    lead = depth.shape[:-2]
    if depth.dim() < 2 or extrinsic.shape != (*lead, 3, 4) or intrinsic.shape != (*lead, 3, 3):
        raise InputError(
            "depth (..., H, W[, 1]), extrinsic (..., 3, 4), intrinsic (..., 3, 3) must share leading dims; "
            f"got {tuple(depth.shape)}, {tuple(extrinsic.shape)}, {tuple(intrinsic.shape)}"
        )
    H, W = depth.shape[-2:]
    dtype = depth.dtype if depth.is_floating_point() else torch.float32
    depth = depth.to(dtype)
    extrinsic, intrinsic = extrinsic.to(depth.device, dtype), intrinsic.to(depth.device, dtype)
    v, u = torch.meshgrid(
        torch.arange(H, device=depth.device, dtype=dtype),
        torch.arange(W, device=depth.device, dtype=dtype),
        indexing="ij",
    )
    fx, fy = intrinsic[..., 0, 0, None, None], intrinsic[..., 1, 1, None, None]
    cx, cy = intrinsic[..., 0, 2, None, None], intrinsic[..., 1, 2, None, None]
    cam = torch.stack(((u - cx) * depth / fx, (v - cy) * depth / fy, depth), dim=-1)  # (..., H, W, 3)
    c2w = camera_to_world(extrinsic)
    R, t = c2w[..., None, None, :3, :3], c2w[..., None, None, :3, 3]
    world = (R @ cam[..., None])[..., 0] + t
    return world.cpu().numpy().astype(np.float32) if as_numpy else world


# ----------------------------------------------------------------------------- confidence


def confidence_mask(conf: Tensor, threshold: float | None = None, percentile: float | None = None) -> Tensor:
    """Bool mask of confident predictions: ``conf >= threshold`` and/or ``conf`` at or above the
    given percentile (0-100) of all finite values of ``conf``. Non-finite values are never kept;
    with neither criterion every finite value is kept."""
    conf = torch.as_tensor(conf)
    mask = torch.isfinite(conf)
    if threshold is not None:
        mask &= conf >= threshold
    if percentile is not None:
        if not 0.0 <= float(percentile) <= 100.0:
            raise InputError(f"percentile must be in [0, 100]; got {percentile}")
        finite = conf[torch.isfinite(conf)].double()
        if finite.numel():
            mask &= conf.double() >= _percentile(finite, float(percentile))
    return mask


def _percentile(values: Tensor, q: float) -> Tensor:
    """NumPy's default (linear) percentile; kthvalue has no size limit, unlike torch.quantile."""
    pos = q / 100.0 * (values.numel() - 1)
    lo, hi = int(pos), min(int(pos) + 1, values.numel() - 1)
    v_lo = values.kthvalue(lo + 1).values
    v_hi = values.kthvalue(hi + 1).values
    return v_lo + (v_hi - v_lo) * (pos - lo)
