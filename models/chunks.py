"""Long scenes in overlapping chunks: which views each model call takes, and how the calls' outputs
are chained into one world frame (NumPy).

Every model call has its own world frame (its first view's camera) and its own scale. Consecutive
chunks share ``overlap`` views; the same pixels of those views have a world point in both chunks,
so a similarity fitted between the two point sets (confidence-weighted, robust to outliers:
``models.pose.robust_sim3``) maps the later chunk onto the earlier one. Composing these maps from
the first chunk on puts every view in view 0's frame. Unlike anchoring every chunk on view 0,
the chain only ever relates views that see each other.
"""

from __future__ import annotations

import numpy as np
from tomeray.models.errors import InputError
from tomeray.models.pose import Sim3, robust_sim3

__all__ = ["align_chunks", "overlapping_chunks"]


def overlapping_chunks(n: int, chunk: int, overlap: int) -> list[np.ndarray]:
    """View indices (in capture order) of the model calls for ``n`` views: one call when they fit,
    else windows of ``chunk`` views, each starting ``chunk - overlap`` views after the previous one;
    the last window ends at the last view (it may be shorter)."""
    if chunk <= 0 or n <= chunk:
        return [np.arange(n)]
    if not 1 <= overlap < chunk:
        raise InputError(f"views.overlap must be in [1, views.chunk - 1]; got {overlap} with chunk {chunk}")
    step = chunk - overlap
    # the last start s is the largest below n - overlap, so s + chunk >= n: every view is covered
    return [np.arange(s, min(s + chunk, n)) for s in range(0, n - overlap, step)]


def _pairs(prev: dict, cur: dict, prev_pos: np.ndarray, cur_pos: np.ndarray, valid: np.ndarray | None,
           max_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World points of the same pixels of the shared views in both chunks, and their weights."""
    a = prev["points"][prev_pos].reshape(-1, 3).astype(np.float64)
    b = cur["points"][cur_pos].reshape(-1, 3).astype(np.float64)
    ca = prev["conf"][prev_pos].reshape(-1).astype(np.float64)
    cb = cur["conf"][cur_pos].reshape(-1).astype(np.float64)
    ok = np.isfinite(a).all(1) & np.isfinite(b).all(1) & np.isfinite(ca) & np.isfinite(cb)
    ok &= (ca > 0) & (cb > 0)
    if valid is not None:
        ok &= valid.reshape(-1)
    idx = np.flatnonzero(ok)
    if max_pairs and len(idx) > max_pairs:
        idx = np.sort(rng.choice(idx, max_pairs, replace=False))
    return b[idx], a[idx], np.sqrt(ca[idx] * cb[idx])


def align_chunks(outputs: list[dict], chunks: list[np.ndarray], valid: np.ndarray | None = None,
                 max_pairs: int = 50_000, seed: int = 0) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Chain the chunks' outputs (each a dict of ``extrinsic`` (n, 3, 4), ``intrinsic``, ``depth``
    (n, H, W), ``points`` (n, H, W, 3), ``conf`` (n, H, W) in that chunk's frame) into view 0's
    frame. ``valid`` (S, H, W): pixels that may be used for the fit (e.g. not padding). A view in
    two chunks is taken from the earlier one. Returns the merged arrays in view order and one
    record per later chunk: its views, the fitted scale, pairs used, inlier share and the median
    residual relative to the overlap's spread."""
    if len(outputs) != len(chunks) or not outputs:
        raise InputError("align_chunks needs one output per chunk")
    rng = np.random.default_rng(seed)
    to_world = [Sim3.identity()]
    records = []
    for k in range(1, len(chunks)):
        shared, prev_pos, cur_pos = np.intersect1d(chunks[k - 1], chunks[k], return_indices=True)
        if not len(shared):
            raise InputError(f"chunk {k} shares no view with chunk {k - 1}: cannot align it")
        src, dst, w = _pairs(outputs[k - 1], outputs[k], prev_pos, cur_pos,
                             None if valid is None else valid[shared], max_pairs, rng)
        if len(src) < 3:
            raise InputError(f"chunk {k}: only {len(src)} usable points in its {len(shared)} shared view(s)")
        fit = robust_sim3(src, dst, w)
        spread = float(np.median(np.linalg.norm(dst - np.median(dst, 0), axis=1))) or 1.0
        to_world.append(to_world[-1].compose(fit.sim))
        records.append({"chunk": k, "first_view": int(chunks[k][0]), "last_view": int(chunks[k][-1]),
                        "shared_views": len(shared), "pairs": len(src), "scale": round(fit.sim.s, 6),
                        "inlier_ratio": round(fit.inlier_ratio, 4),
                        "median_residual_rel": round(fit.median_residual / spread, 6),
                        "iterations": fit.iterations})
    n = int(max(c.max() for c in chunks)) + 1
    source = np.full(n, -1)
    position = np.zeros(n, np.int64)
    for k, chunk in enumerate(chunks):
        new = source[chunk] < 0
        source[chunk[new]] = k
        position[chunk[new]] = np.flatnonzero(new)
    merged: dict[str, list] = {key: [] for key in outputs[0]}
    for view in range(n):
        out, sim, p = outputs[source[view]], to_world[source[view]], position[view]
        merged["extrinsic"].append(sim.apply_to_extrinsics(out["extrinsic"][p]))
        merged["intrinsic"].append(out["intrinsic"][p])
        merged["depth"].append(sim.s * out["depth"][p])
        merged["points"].append(sim.apply(out["points"][p]).astype(out["points"].dtype))
        merged["conf"].append(out["conf"][p])
        for key in set(out) - {"extrinsic", "intrinsic", "depth", "points", "conf"}:
            merged[key].append(out[key][p])
    return {key: np.stack(v) for key, v in merged.items()}, records
