"""Small JPEG thumbnails of a scene's views, made when the scene is written (like the thumbnails of
an index's rows), so a viewer can show each camera's picture without reading the originals.

``thumbnails/scene=<key>.parquet``: ``frame_idx`` int32, ``thumbnail`` binary (JPEG, at most
320x180). A view whose image can no longer be read gets none; the scene is written all the same.
"""

from __future__ import annotations

import logging

import pyarrow as pa
import pyarrow.parquet as pq
from tomeray.pipeline.core.atomic import atomic_write_parquet
from tomeray.pipeline.reconstruction.layout import ReconLayout, scene_key
from tomeray.pipeline.reconstruction.results import SceneCameras

__all__ = ["THUMBNAILS_SCHEMA", "read_view_thumbnail", "thumbnails_path", "write_view_thumbnails"]

log = logging.getLogger(__name__)

THUMBNAILS_SCHEMA = pa.schema([("frame_idx", pa.int32()), ("thumbnail", pa.binary())])


def thumbnails_path(layout: ReconLayout, scene: str):
    return layout.root / "thumbnails" / f"scene={scene_key(scene)}.parquet"


def _view_jpegs(cams: SceneCameras) -> dict[int, bytes]:
    from tomeray.operators.scene_load import read_image
    from tomeray.operators.thumbnail import thumbnail_jpeg, thumbnails_of

    out: dict[int, bytes] = {}
    by_video: dict[str, list[int]] = {}
    for frame, path in zip(cams.frame_idx.tolist(), cams.image_path):
        if path.lower().endswith(_video_extensions()):
            by_video.setdefault(path, []).append(int(frame))
            continue
        try:
            out[int(frame)] = thumbnail_jpeg(read_image(path))
        except Exception as e:  # noqa: BLE001 - a missing picture must not lose the scene
            log.info("no thumbnail for view %s of %s: %s", frame, cams.scene, e)
    for path, frames in by_video.items():
        try:
            out.update(zip(frames, thumbnails_of(path, frames, short_side=240)))
        except Exception as e:  # noqa: BLE001
            log.info("no thumbnails for the views of %s in %s: %s", path, cams.scene, e)
    return out


def _video_extensions() -> tuple[str, ...]:
    from tomeray.operators.video_io import VIDEO_EXTENSIONS

    return tuple(e.lower() for e in VIDEO_EXTENSIONS)


def write_view_thumbnails(layout: ReconLayout, scene: str, cams: SceneCameras) -> int:
    """Write the scene's view thumbnails (atomically); returns how many views got one."""
    jpegs = _view_jpegs(cams)
    frames = sorted(jpegs)
    atomic_write_parquet(thumbnails_path(layout, scene), pa.Table.from_arrays(
        [pa.array(frames, pa.int32()), pa.array([jpegs[f] for f in frames], pa.binary())],
        schema=THUMBNAILS_SCHEMA))
    return len(frames)


def read_view_thumbnail(layout: ReconLayout, scene: str, frame_idx: int) -> bytes | None:
    """The JPEG of one view, or None (no such view, or no thumbnails for the scene)."""
    path = thumbnails_path(layout, scene)
    if not path.is_file():
        return None
    table = pq.read_table(path, filters=[("frame_idx", "=", int(frame_idx))])
    return table["thumbnail"][0].as_py() if table.num_rows else None
