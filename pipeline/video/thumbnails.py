"""Thumbnails for rows indexed without them (indexes made before thumbnails, or with
``output.thumbnails=false``): a rerun of ``tomeray index`` decodes just those frames, on Ray, and
writes them as thumbnail parts. New rows get theirs from the decode stage instead."""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np
import pyarrow as pa
from tomeray.operators.thumbnail import middle_frame
from tomeray.pipeline.video.config import IndexConfig
from tomeray.pipeline.video.layout import IndexLayout, thumbnails_schema

__all__ = ["backfill_thumbnails", "rows_without_thumbnails"]

log = logging.getLogger(__name__)


def rows_without_thumbnails(layout: IndexLayout) -> list[dict]:
    """One item per video with rows lacking a thumbnail: ``{path, video_ids, frames}``."""
    have = layout.thumbnail_ids()
    ids = layout.read_embeddings(["video_id"])["video_id"].to_numpy()
    if np.isin(ids, have).all():  # the common case reads the id columns only
        return []
    table = layout.read_embeddings(["video_id", "path", "frame_indices"])
    ids = table["video_id"].to_numpy()
    paths, frames = table["path"].to_pylist(), table["frame_indices"].to_pylist()
    by_path: dict[str, dict] = defaultdict(lambda: {"video_ids": [], "frames": []})
    for i in np.flatnonzero(~np.isin(ids, have)):
        item = by_path[paths[i]]
        item["video_ids"].append(int(ids[i]))
        item["frames"].append(middle_frame(frames[i]))
    return [{"path": path, **item} for path, item in by_path.items()]


def backfill_thumbnails(layout: IndexLayout, cfg: IndexConfig, run_id: str, image_size: int,
                        address: str | None = None) -> int:
    """Make the missing thumbnails of ``layout`` (decode tasks on the Ray cluster); returns how many
    rows got one. Videos that no longer decode keep none."""
    items = rows_without_thumbnails(layout)
    if not items:
        return 0
    from tomeray.operators.thumbnail import ThumbnailMaker
    from tomeray.pipeline.core.graph import source_dataset, task_stage
    from tomeray.pipeline.core.ray_session import init_ray

    log.info("making thumbnails for %d row(s) of %d video(s) indexed without them",
             sum(len(i["video_ids"]) for i in items), len(items))
    init_ray(address or cfg.ray.address, num_cpus=cfg.ray.num_cpus)
    ds = task_stage(source_dataset(items, progress=cfg.ray.progress, max_blocks=cfg.ray.max_blocks),
                    ThumbnailMaker(image_size), cfg.ray.tasks)
    made, seq = 0, 0
    for batch in ds.iter_batches(batch_size=cfg.output.shard_rows, batch_format="numpy"):
        if not len(batch["video_id"]):
            continue
        table = pa.Table.from_pydict({"video_id": batch["video_id"].astype(np.int64),
                                      "thumbnail": [bytes(t) for t in batch["thumbnail"]]},
                                     schema=thumbnails_schema())
        layout.write_thumbnails(table, f"{run_id}-b{seq:05d}")
        made, seq = made + table.num_rows, seq + 1
    return made
