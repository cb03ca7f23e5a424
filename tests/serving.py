"""Indexes and servers of the search tests: an index built by ``tomeray index`` from the opencv-doc
videos (random weights, segment mode), synthetic indexes of random vectors, and an in-process uvicorn
server for tests that change an index while it is served (a ``tomeray serve`` child process:
``jobs.bench_serve.Server``)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
from media import write_video
from tomeray.pipeline.video.layout import embeddings_schema

TOKEN = "test-token-0123456789"
SEGMENT_S = 4.0
INDEX_OPTIONS = ["model.arch=ViT-S-32", "model.pretrained=none", "model.preset=none", "model.num_frames=4",
                 "inference.device=cpu", "ray.progress=false", f"sampling.segment_s={SEGMENT_S}"]
WEBM = "walk.webm"  # the browser-playable video (Chromium plays no AVI)


def excerpt(source: Path, target: Path, frames: int, size: tuple[int, int], fourcc: str) -> Path:
    """The first ``frames`` frames of an opencv-doc video, smaller (quick to decode), at its frame rate."""
    capture = cv2.VideoCapture(str(source))
    fps = capture.get(cv2.CAP_PROP_FPS)
    writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert writer.isOpened(), f"OpenCV cannot write {target.suffix} with {fourcc}"
    for _ in range(frames):
        ok, frame = capture.read()
        if not ok:
            break
        writer.write(cv2.resize(frame, size, interpolation=cv2.INTER_AREA))
    writer.release()
    capture.release()
    return target


def make_corpus(folder: Path, opencv_data: Path) -> Path:
    """opencv-doc's tree.avi, the first 5 s of Megamind.avi, the first 12 s of vtest.avi as WebM (a
    format browsers play), and a small video the security tests may replace with a link."""
    (folder / "clips").mkdir(parents=True)
    shutil.copy(opencv_data / "tree.avi", folder / "tree.avi")
    excerpt(opencv_data / "Megamind.avi", folder / "clips" / "megamind.avi", 120, (240, 176), "MJPG")
    excerpt(opencv_data / "vtest.avi", folder / "clips" / WEBM, 120, (192, 144), "VP80")
    write_video(folder / "replaced.avi", 12, 96, 64, seed=5)
    return folder


def build_index(corpus: Path, out: Path, extra: list[str] = ()) -> Path:
    from tomeray.pipeline.video.cli import main

    code = main([str(corpus), "--out", str(out), *INDEX_OPTIONS, f"input.id_root={corpus}", *extra])
    assert code == 0, f"tomeray index exited with {code}"
    return out


DIM = 16
IDENTITY = {"arch": "ViT-S-32", "preset": "none", "num_frames": 4}


def shard(ids, paths, starts, durations, vectors) -> pa.Table:
    """Embedding rows in the index schema (clips of 2 s)."""
    n, dim = len(ids), np.asarray(vectors).shape[1]
    return pa.Table.from_pydict({
        "video_id": pa.array(ids, pa.int64()), "path": paths, "start_s": starts,
        "end_s": [s + 2.0 for s in starts], "duration_s": durations, "fps": [10.0] * n, "n_frames": [50] * n,
        "frame_indices": [[0, 10, 20]] * n,
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(np.ravel(np.asarray(vectors, np.float32))),
                                                       dim),
    }, schema=embeddings_schema(dim))


def corpus(n: int, seed: int = 0, dim: int = DIM):
    """n rows over n // 4 videos in two folders; 4 clips of 2 s per video."""
    rng = np.random.default_rng(seed)
    videos = [f"/corpus/{'cats' if v % 2 else 'dogs'}/video_{v:04d}.{'mp4' if v % 3 else 'webm'}"
              for v in range(max(1, n // 4))]
    paths = [videos[i // 4 % len(videos)] for i in range(n)]
    starts = [2.0 * (i % 4) for i in range(n)]
    durations = [8.0 + (i // 4) % 7 for i in range(n)]
    ids = rng.choice(2**62, size=n, replace=False).astype(np.int64)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return ids, paths, starts, durations, vectors


def write_synthetic(root, n=240, parts=3, factory="flat", seed=0, identity=None, dim=DIM, same=None):
    """An index of random unit vectors in the real layout (shards, FAISS, manifest); ``identity``: the
    model the manifest names (default a stand-in, for tests that never build the encoder); ``same``:
    {row: vector} rows given a vector of the caller's instead (ties made on purpose)."""
    from tomeray.pipeline.video.config import FaissConfig
    from tomeray.pipeline.video.job import finish_index
    from tomeray.pipeline.video.layout import IndexLayout, index_header

    layout = IndexLayout(root)
    sampling = {"fps": None, "segment_s": 2.0, "num_frames": 4}
    manifest = layout.open(index_header(identity or IDENTITY, "random-init(seed=0)", dim, sampling, None))
    ids, paths, starts, durations, vectors = corpus(n, seed, dim)
    for row, vector in (same or {}).items():
        vectors[row] = vector
    for p, rows in enumerate(np.array_split(np.arange(n), parts)):
        layout.write_embeddings(shard(ids[rows], [paths[i] for i in rows], [starts[i] for i in rows],
                                      [durations[i] for i in rows], vectors[rows]), f"test-{p:05d}")
    finish_index(layout, manifest, FaissConfig(factory=factory), True, layout.indexed_paths())
    return layout, (ids, paths, starts, durations, vectors)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class InProcessServer:
    """A :class:`SearchService` behind uvicorn on a thread of this process (for tests that need to
    reach into the service while it serves)."""

    def __init__(self, index_dirs: list[Path], overrides: list[str] = (), token: str | None = None):
        from tomeray.pipeline.core.config import load_config
        from tomeray.pipeline.video.serve.app import create_app
        from tomeray.pipeline.video.serve.config import ServeConfig
        from tomeray.pipeline.video.serve.service import SearchService

        cfg = load_config(ServeConfig, "serve", ["inference.device=cpu", *overrides])
        self.service = SearchService([str(d) for d in index_dirs], cfg)
        self.app = create_app(self.service, token=token, cors_origins=cfg.server.cors_origins)

    def __enter__(self) -> InProcessServer:
        import uvicorn

        port = free_port()
        config = uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.service.close()
