"""The served corpus and servers of the search-service tests: an index built by ``tomeray index`` from
the opencv-doc videos (random weights, segment mode), a ``tomeray serve`` process on a free loopback
port, and an in-process uvicorn server for tests that change an index while it is served."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
from media import write_video

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``tomeray serve INDEX --port 0 ...`` in a child process; ``url`` once it listens."""

    def __init__(self, index: Path, *args: str, timeout: float = 240.0):
        self.command = [sys.executable, "-m", "tomeray.pipeline.cli", "serve", str(index), "--port", "0",
                        *args]
        self.timeout = timeout
        self.url = ""
        self.output: list[str] = []

    def __enter__(self) -> ServerProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, env=env)
        ready = threading.Event()

        def read() -> None:
            for line in self.process.stdout:
                self.output.append(line)
                match = re.search(r" at (http://[^ ]+)", line)
                if line.startswith("serving") and match:
                    self.url = match.group(1)
                    ready.set()
            ready.set()

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(self.timeout) or not self.url:
            self.__exit__()
            raise RuntimeError("the server did not start:\n" + "".join(self.output[-40:]))
        return self

    def __exit__(self, *exc) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


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
