"""Tracks for bundle adjustment from OpenCV features: SIFT keypoints per view, matched between
view pairs with Lowe's ratio test, each pair's matches verified by a RANSAC fundamental matrix,
then chained across pairs (union-find) into tracks; a track that would hold two keypoints of one
view is inconsistent and dropped."""

from __future__ import annotations

import numpy as np
from tomeray.models.bundle_adjustment import Tracks

__all__ = ["feature_tracks", "match_pairs"]


def match_pairs(n: int, window: int) -> list[tuple[int, int]]:
    """View pairs to match: every pair when ``window`` <= 0, else pairs at most ``window`` apart in
    capture order."""
    return [(i, j) for i in range(n) for j in range(i + 1, n) if window <= 0 or j - i <= window]


def _find(parent: np.ndarray, x: int) -> int:
    root = x
    while parent[root] != root:
        root = parent[root]
    while parent[x] != root:
        parent[x], x = root, parent[x]
    return root


def feature_tracks(images: np.ndarray, masks: np.ndarray | None = None, max_features: int = 2048,
                   ratio: float = 0.8, window: int = 0, min_inliers: int = 15,
                   ransac_px: float = 2.0) -> tuple[Tracks, dict]:
    """``images`` (V, H, W, 3) uint8 RGB -> tracks in those images' pixels, and counts (keypoints,
    pairs matched, pairs verified, matches kept). ``masks`` (V, H, W): where keypoints may lie."""
    import cv2

    sift = cv2.SIFT_create(nfeatures=max_features)
    keypoints, descriptors = [], []
    for v, image in enumerate(images):
        gray = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
        mask = None if masks is None else masks[v].astype(np.uint8) * 255
        kp, desc = sift.detectAndCompute(gray, mask)
        keypoints.append(np.array([k.pt for k in kp], np.float64).reshape(-1, 2))
        descriptors.append(desc if desc is not None else np.zeros((0, 128), np.float32))
    offsets = np.concatenate([[0], np.cumsum([len(k) for k in keypoints])])
    parent = np.arange(offsets[-1])
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    pairs = match_pairs(len(images), window)
    verified = kept = 0
    for i, j in pairs:
        if len(descriptors[i]) < 2 or len(descriptors[j]) < 2:
            continue
        good = [m[0] for m in matcher.knnMatch(descriptors[i], descriptors[j], k=2)
                if len(m) == 2 and m[0].distance < ratio * m[1].distance]
        if len(good) < min_inliers:
            continue
        a = np.array([m.queryIdx for m in good])
        b = np.array([m.trainIdx for m in good])
        _, inlier = cv2.findFundamentalMat(keypoints[i][a], keypoints[j][b], cv2.FM_RANSAC, ransac_px, 0.999)
        if inlier is None or int(inlier.sum()) < min_inliers:
            continue
        verified += 1
        inlier = inlier.reshape(-1).astype(bool)
        kept += int(inlier.sum())
        for p, q in zip(a[inlier] + offsets[i], b[inlier] + offsets[j]):
            ra, rb = _find(parent, int(p)), _find(parent, int(q))
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([_find(parent, x) for x in range(len(parent))], np.int64)
    view = np.repeat(np.arange(len(images)), np.diff(offsets))
    # a track needs >= 2 views and at most one keypoint per view
    sizes = np.bincount(roots, minlength=len(parent))
    per_view = np.unique(np.stack([roots, view], 1), axis=0)
    distinct = np.bincount(per_view[:, 0], minlength=len(parent))
    good_root = (sizes >= 2) & (sizes == distinct)
    sel = np.flatnonzero(good_root[roots])
    _, track = np.unique(roots[sel], return_inverse=True)
    xy = np.concatenate(keypoints)[sel] if len(sel) else np.zeros((0, 2))
    tracks = Tracks(view[sel], track, xy)
    counts = {"keypoints": int(offsets[-1]), "pairs": len(pairs), "pairs_verified": verified,
              "matches": kept, "tracks": tracks.count, "observations": len(sel)}
    return tracks, counts
