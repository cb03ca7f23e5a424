"""MSR-VTT in the layout the retrieval literature uses (CLIP4Clip's ``msrvtt_data``, TempMe's loader).

```
<folder>/MSRVTT_data.json          {"videos": [...], "sentences": [{"video_id", "caption", "sen_id"}, ...]}
<folder>/MSRVTT_train.9k.csv       column video_id: the 9k training videos   (data.msrvtt_train_list)
<folder>/MSRVTT_JSFUSION_test.csv  columns key, vid_key, video_id, sentence: the 1k-A test pairs
                                   (data.msrvtt_test_list)
<videos>/<video_id>.mp4            data.video_root, else the first of <folder>/videos/all,
                                   <folder>/MSRVTT_Videos, <folder>/videos, <folder>/Videos, <folder>
```

Training clips are the 9k list's videos with all their sentences from ``MSRVTT_data.json`` (about 20
each, every one a training pair, as the reference trains); test clips are the 1k-A list's videos, each
with its one test sentence. A video in both lists is kept in the test split only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from tomeray.models.errors import InputError
from tomeray.pipeline.core.inputs import read_table_rows
from tomeray.pipeline.training.config import DataConfig
from tomeray.pipeline.training.data import ClipBuilder, ClipSet

__all__ = ["VIDEO_FOLDERS", "load_msrvtt", "msrvtt_video_root"]

VIDEO_FOLDERS = ("videos/all", "MSRVTT_Videos", "videos", "Videos", ".")


def msrvtt_video_root(folder: Path, cfg: DataConfig) -> Path:
    if cfg.video_root:
        return Path(cfg.video_root).expanduser()
    candidates = (folder / f for f in VIDEO_FOLDERS)
    return next((c for c in candidates if c.is_dir() and any(c.glob("*.mp4"))), folder)


def _video_ids(path: Path, what: str) -> tuple[list[str], list[dict]]:
    if not path.is_file():
        raise InputError(f"MSR-VTT {what} '{path}' does not exist; set data.msrvtt_train_list / "
                         "data.msrvtt_test_list, or put the file next to MSRVTT_data.json")
    columns, rows = read_table_rows(path)
    if "video_id" not in columns:
        raise InputError(f"MSR-VTT {what} '{path}' has no video_id column (columns: {', '.join(columns)})")
    return [str(r["video_id"]).strip() for r in rows], rows


def load_msrvtt(data: Path, cfg: DataConfig, splits: tuple[str, ...] = ("train", "test")) -> ClipSet:
    """The clips of the ``splits`` asked for (``train``: the training list, ``test``: the 1k-A list;
    ``val`` is held out of ``train`` later)."""
    folder = data if data.is_dir() else data.parent
    annotations = folder / "MSRVTT_data.json"
    try:
        sentences = json.loads(annotations.read_text(encoding="utf-8"))["sentences"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InputError(f"cannot read MSR-VTT annotations '{annotations}': {type(e).__name__}: "
                         f"{e}") from None
    want_train = "train" in splits or "val" in splits
    train_ids, _ = _video_ids(folder / cfg.msrvtt_train_list, "training list") if want_train else ([], [])
    test_list = folder / cfg.msrvtt_test_list
    # the test videos are kept out of training even when only training clips are asked for
    read_test = "test" in splits or test_list.is_file()
    test_ids, test_rows = _video_ids(test_list, "test list") if read_test else ([], [])
    if "test" not in splits:
        test_rows = []
    if test_rows and "sentence" not in test_rows[0]:
        raise InputError(f"MSR-VTT test list '{folder / cfg.msrvtt_test_list}' has no sentence column")
    videos = msrvtt_video_root(folder, cfg)
    builder = ClipBuilder(str(folder))
    test = set(test_ids)
    train = {v for v in train_ids if v not in test}
    nan = float("nan")
    for number, s in enumerate(sentences, 1):
        video_id = str(s.get("video_id", "")).strip() if isinstance(s, dict) else ""
        if video_id in train:
            builder.add(f"MSRVTT_data.json sentence {number}", os.path.abspath(videos / f"{video_id}.mp4"),
                        s.get("caption"), nan, nan, "train")
    for number, (video_id, row) in enumerate(zip(test_ids, test_rows), 1):  # none unless asked for
        builder.add(f"{cfg.msrvtt_test_list} row {number}", os.path.abspath(videos / f"{video_id}.mp4"),
                    row.get("sentence"), nan, nan, "test")
    return builder.result("msrvtt")
