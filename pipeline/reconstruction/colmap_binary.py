"""The COLMAP binary model of a scene, laid out the way COLMAP's own pipeline leaves a project, so
that splatting trainers (gsplat, nerfstudio's colmap data parser, the 3DGS reference code) read the
folder as it is::

    colmap/<scene>/images/<name>              links to the original images (image folders)
    colmap/<scene>/sparse/0/cameras.bin       PINHOLE or SIMPLE_PINHOLE, at each image's own size
    colmap/<scene>/sparse/0/images.bin        world-to-camera poses, 2D observations
    colmap/<scene>/sparse/0/points3D.bin      points with their tracks

Written through pycolmap into a temporary folder, then each file renamed into place. Points are
observed in the view they came from (``exports.source_observations``), as in the text model.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from tomeray.models.bundle_adjustment import Tracks, colmap_reconstruction
from tomeray.pipeline.reconstruction.exports import source_observations
from tomeray.pipeline.reconstruction.results import SceneCameras

__all__ = ["link_images", "write_colmap_binary"]


def link_images(folder: Path, names: list[str], paths: list[str]) -> int:
    """``folder/<name>`` -> the original image, for every view (symbolic links, replaced when
    present). Returns the number of links."""
    for name, path in zip(names, paths):
        link = folder / name
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".{link.name}.tmp")
        tmp.unlink(missing_ok=True)
        os.symlink(os.path.abspath(path), tmp)
        os.replace(tmp, link)
    return len(names)


def write_colmap_binary(project: str | os.PathLike, names: list[str], cams: SceneCameras, xyz: np.ndarray,
                        rgb: np.ndarray, views: np.ndarray, camera_model: str = "PINHOLE",
                        shared_camera: bool = False, video: bool = False) -> dict[str, int]:
    """Write ``project/sparse/0/*.bin`` (and ``project/images/`` links unless the views are video
    frames); returns counts."""
    project = Path(project)
    xyz = np.asarray(xyz, np.float64).reshape(-1, 3)
    views = np.asarray(views, np.int64).reshape(-1)
    keep, uv = source_observations(xyz, views, cams.extrinsic, cams.intrinsic, cams.width, cams.height)
    ids = np.flatnonzero(keep)
    tracks = Tracks(views[ids], np.arange(len(ids)), uv[ids])
    rec, _ = colmap_reconstruction(cams.extrinsic, cams.intrinsic, cams.width, cams.height, names, xyz[ids],
                                   tracks, np.asarray(rgb, np.uint8).reshape(-1, 3)[ids], camera_model,
                                   shared_camera)
    target = project / "sparse" / "0"
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".tmp-") as tmp:
        rec.write_binary(tmp)
        for name in ("cameras.bin", "images.bin", "points3D.bin"):  # points last: it marks the model done
            shutil.move(os.path.join(tmp, name), target / f".{name}.tmp")
            os.replace(target / f".{name}.tmp", target / name)
    linked = 0 if video else link_images(project / "images", names, cams.image_path)
    return {"images": len(names), "points": len(ids), "linked_images": linked}
