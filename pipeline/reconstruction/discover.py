"""Scenes of ``tomeray reconstruct``'s inputs.

An input is a scenes root (each sub-folder is a scene, its images found recursively and ordered
by path; images directly in the root form a scene named after the root; a video file in the root
is a scene named after the file), a video file (one scene), or a CSV / Parquet list with
``scene`` and ``image_path`` columns (relative paths are relative to the list). ``frame_idx`` is a
view's position in its scene's ordered image list, or its frame number in a video (whose views all
have the video's path as ``image_path``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tomeray.models.errors import InputError
from tomeray.pipeline.core.errors_table import error_row
from tomeray.pipeline.core.inputs import TABLE_EXTENSIONS, normalise_extensions, read_table_rows, walk_files
from tomeray.pipeline.reconstruction.config import ReconConfig
from tomeray.pipeline.reconstruction.layout import scene_key

__all__ = ["discover_scenes"]

_NAME_OK = re.compile(r"^[^\x00-\x1f]*\S[^\x00-\x1f]*$")  # printable, not blank


def _read_scene_list(path: Path, scene_column: str, path_column: str) -> list[tuple[str, str]]:
    names, rows = read_table_rows(path)
    missing = [c for c in (scene_column, path_column) if c not in names]
    if missing:
        raise InputError(f"{path}: missing column(s) {missing}; has {names}")
    base = path.parent.resolve()
    pairs = [(r[scene_column], r[path_column]) for r in rows]
    return [(str(s).strip(), str(p) if os.path.isabs(str(p)) else str(base / str(p)))
            for s, p in pairs if s is not None and p]


def discover_scenes(inputs: list[str], cfg: ReconConfig) -> tuple[list[dict], list[dict]]:
    """Scene specs ``{"scene", "images" | "video", "frame_idx", "root", "input"}`` and error rows
    (stage ``discover``) for inputs that name nothing, empty scenes and duplicate names. A row's
    item is its scene, else the input; its ``scene`` key says which ("" for an input)."""
    image_exts = normalise_extensions(cfg.load.extensions)
    video_exts = normalise_extensions(cfg.video.extensions)
    specs: list[dict] = []
    errors: list[dict] = []
    item = ""  # the input being expanded, as the user gave it

    def error(scene: str, path: str, error_type: str, message: str, given: str | None = None) -> None:
        given = item if given is None else given
        row = error_row(scene or given, "discover", error_type, message, input=given, path=path)
        errors.append({**row, "scene": scene})  # "scene": "" for an input that names no scene

    def add(spec: dict) -> None:
        specs.append({**spec, "input": item})

    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            root = path.resolve()
            children = sorted(p for p in root.iterdir() if not p.name.startswith("."))
            for child in children:
                if child.is_dir():
                    add({"scene": child.name, "images": walk_files(child, image_exts), "root": str(child)})
                elif child.is_file() and child.name.lower().endswith(video_exts):
                    add({"scene": child.stem, "video": str(child), "root": str(root)})
            direct = [str(c) for c in children if c.is_file() and c.name.lower().endswith(image_exts)]
            if direct:
                add({"scene": root.name, "images": direct, "root": str(root)})
            elif not any(c.is_dir() or c.name.lower().endswith(video_exts) for c in children):
                error(root.name, str(root), "NoScenes", f"'{root}' holds no scene folders, images or videos")
        elif path.is_file() and path.name.lower().endswith(video_exts):
            add({"scene": path.stem, "video": str(path.resolve()), "root": str(path.resolve().parent)})
        elif path.is_file() and path.suffix.lower() in TABLE_EXTENSIONS:
            try:
                rows = _read_scene_list(path, cfg.load.scene_column, cfg.load.path_column)
            except (OSError, ValueError, UnicodeDecodeError) as e:
                error("", str(path), type(e).__name__, f"cannot read the scene list: {e}")
                continue
            grouped: dict[str, list[str]] = {}
            for scene, image in rows:
                grouped.setdefault(scene, []).append(image)
            for scene, images in grouped.items():
                add({"scene": scene, "images": images, "root": os.path.commonpath(
                    [os.path.dirname(p) for p in images])})
        elif path.exists():
            error("", str(path), "UnsupportedInput", f"'{path}' is neither a scenes folder, a video nor a "
                  ".csv/.parquet scene list")
        else:
            error("", str(path), "FileNotFoundError", f"'{path}' does not exist")

    unique, seen = [], set()
    for spec in specs:
        name = spec["scene"]
        if name in seen:
            error(name, spec.get("video") or spec["root"], "DuplicateScene",
                  f"another input already has a scene named '{name}'; rename one of them", spec["input"])
        elif not _NAME_OK.match(name) or name in (".", "..") or len(scene_key(name)) > 200:
            error(name, spec["root"], "InvalidSceneName", f"scene name {name!r} cannot name files",
                  spec["input"])
        elif "images" in spec and not spec["images"]:
            seen.add(name)
            error(name, spec["root"], "NoImages",
                  f"no image files ({', '.join(image_exts)}) in '{spec['root']}'", spec["input"])
        else:
            seen.add(name)
            if "images" in spec:
                spec["frame_idx"] = list(range(len(spec["images"])))
            unique.append(spec)
    return unique, errors
