"""Reconstructions in the service: how long a scene's points take to serve and to appear in the 3D
viewer, at 100k, 1M and 5M points, and how long a search hit takes to become a scene.

    python -m tomeray.jobs.bench_viewer --json viewer.json

A reconstruction output holds one synthetic scene per size (points in a few coloured blobs, four
cameras with thumbnails) and is served by ``tomeray serve`` on loopback. Per size:

* ``server_ms``: ``GET /api/scenes/{scene}/points?max=N`` from request to last byte (median of
  ``--repeats``), N = the scene's size; ``served_points`` / ``bytes`` what came back.
* ``inprocess_ms``: the baseline, measured in the same run: the same points read and packed in this
  process (``SceneStore.points``, no HTTP); ``http_ratio`` = server_ms / inprocess_ms.
* ``rss_growth_mb``: how much the server process grew over the requests of this size (points are
  read by row group, so it should not grow by the scene's size per request).
* ``browser_ms``: navigation to the viewer page's "points-loaded" mark in headless Chromium (WebGL
  through SwiftShader; empty when Chromium or selenium is missing).

And the hit-to-3D path (``--hit-views`` > 0): a synthetic clip reconstructed by the service's job
runner with random ``vggt-tiny`` weights, ``cold`` (the model loads) then ``warm``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np

COLUMNS = [("stage", "stage", -7, ""), ("points", "points", 9, ","), ("served_points", "served", 9, ","),
           ("bytes", "bytes", 12, ","), ("server_ms", "server ms", 10, ".1f"),
           ("inprocess_ms", "in-proc ms", 10, ".1f"), ("http_ratio", "http/in-proc", 12, ".2f"),
           ("rss_growth_mb", "rss +MB", 8, ".1f"), ("browser_ms", "browser ms", 10, ".0f")]


def synthetic_scene(layout, name: str, n: int, image: Path, seed: int = 0) -> None:
    """A finished scene of ``n`` points in coloured blobs, seen by four cameras on a circle."""
    from tomeray.pipeline.reconstruction.layout import cameras_table, points_table
    from tomeray.pipeline.reconstruction.results import SceneCameras
    from tomeray.pipeline.reconstruction.thumbnails import write_view_thumbnails

    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (8, 3)) + [0, 0, 4]
    blob = rng.integers(0, 8, n)
    xyz = (centres[blob] + rng.normal(0, 0.3, (n, 3))).astype(np.float32)
    rgb = (rng.integers(40, 255, (8, 3))[blob]).astype(np.uint8)
    conf = rng.gamma(2.0, 1.0, n).astype(np.float32)
    extrinsic, K = [], np.array([[500.0, 0, 320], [0, 500.0, 240], [0, 0, 1]])
    for angle in np.linspace(-0.4, 0.4, 4):
        c, s = np.cos(angle), np.sin(angle)
        R = np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])
        extrinsic.append(np.hstack([R, (-R @ np.array([4 * s, 0, 4 - 4 * c]))[:, None]]))
    cams = SceneCameras(name, np.arange(4, dtype=np.int32), [str(image)] * 4, np.full(4, 640, np.int32),
                        np.full(4, 480, np.int32), np.asarray(extrinsic), np.repeat(K[None], 4, 0))
    layout.write_scene_parts(name, cameras_table(name, cams.frame_idx, cams.image_path, cams.width,
                                                 cams.height, cams.extrinsic, cams.intrinsic),
                             points_table(xyz, rgb, conf, np.zeros(n, np.int32)), [])
    write_view_thumbnails(layout, name, cams)
    layout.write_record(name, {"views": 4, "points": n, "image_errors": 0, "exports": [], "synthetic": True})


def build_output(root: Path, sizes: list[int]) -> Path:
    from tomeray.pipeline.reconstruction.layout import ReconLayout

    layout = ReconLayout(root)
    layout.open({"settings": {"views": {"synthetic": True}}, "weights_id": "synthetic", "complete": False})
    image = root / "view.jpg"
    if not image.is_file():
        picture = np.full((480, 640, 3), 60, np.uint8)
        cv2.circle(picture, (320, 240), 150, (80, 170, 255), -1)
        cv2.imwrite(str(image), picture)
    finished = layout.finished_scenes()
    for n in sizes:
        if f"synthetic-{n}" not in finished:
            synthetic_scene(layout, f"synthetic-{n}", n, image)
    layout.finish(layout.read_manifest(), complete=True)
    return root


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fetch_points(url: str, scene: str, n: int) -> tuple[float, int, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=300)
    started = time.perf_counter()
    connection.request("GET", f"/api/scenes/{scene}/points?max={n}")
    response = connection.getresponse()
    body = response.read()
    elapsed = (time.perf_counter() - started) * 1e3
    connection.close()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {body[:200]!r}")
    return elapsed, int(response.getheader("X-Points-Count")), len(body)


def browser_ms(url: str, scene: str, workdir: Path) -> float | None:
    """Navigation to the viewer's "points-loaded" mark, in headless Chromium (None without one)."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError:
        return None
    if not chromium or not driver:
        return None
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ["--headless=new", "--no-sandbox", "--window-size=1280,800", "--use-angle=swiftshader",
                 "--enable-unsafe-swiftshader", "--no-first-run", f"--user-data-dir={workdir / 'chromium'}"]:
        options.add_argument(flag)
    session = webdriver.Chrome(service=Service(driver), options=options)
    try:
        session.set_page_load_timeout(300)
        session.get(f"{url}/scenes/{scene}")
        WebDriverWait(session, 300, poll_frequency=0.05).until(
            lambda d: d.execute_script("return document.body.dataset.points === 'loaded'"))
        return float(session.execute_script(
            "return performance.getEntriesByName('points-loaded')[0].startTime"))
    finally:
        session.quit()


def serve_rows(output: Path, sizes: list[int], repeats: int, workdir: Path, browser: bool) -> list[dict]:
    from tomeray.jobs.bench_serve import Server
    from tomeray.pipeline.service.scenes import SceneStore

    store = SceneStore([output])
    rows = []
    with Server([str(output), "--port", "0", f"limits.max_points={max(sizes)}",
                 f"limits.default_points={max(sizes)}"], timeout=300) as server:
        pid = server.process.pid
        for n in sizes:
            scene = f"synthetic-{n}"
            fetch_points(server.url, scene, n)  # the first read of the file: page cache, imports
            before = rss_mb(pid)
            timings = [fetch_points(server.url, scene, n) for _ in range(repeats)]
            grown = rss_mb(pid) - before
            store.points(scene, n)  # the same first read in this process
            local = []
            for _ in range(repeats):
                started = time.perf_counter()
                store.points(scene, n)
                local.append((time.perf_counter() - started) * 1e3)
            server_ms, inprocess_ms = statistics.median(t[0] for t in timings), statistics.median(local)
            rows.append({"stage": "points", "points": n, "served_points": timings[0][1],
                         "bytes": timings[0][2], "server_ms": server_ms, "inprocess_ms": inprocess_ms,
                         "http_ratio": server_ms / inprocess_ms, "rss_growth_mb": grown,
                         "browser_ms": browser_ms(server.url, scene, workdir) if browser else None})
            print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    return rows


def hit_rows(workdir: Path, views: int) -> list[dict]:
    """The hit-to-3D job path: a synthetic clip, cold (model load) then warm (another window)."""
    from tomeray.pipeline.core.config import load_config
    from tomeray.pipeline.service.config import ScenesConfig
    from tomeray.pipeline.service.hit_jobs import HitJobs
    from tomeray.pipeline.service.scenes import SceneStore

    clip = workdir / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (320, 240))
    base = np.random.default_rng(1).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    for i in range(80):
        writer.write(np.roll(base, 4 * i, axis=1))
    writer.release()
    out = workdir / f"hits-{time.time_ns()}"
    cfg = load_config(ScenesConfig, "scenes", ["recon.model.arch=vggt-tiny", "recon.model.pretrained=none",
                                               f"recon.views={views}"])
    jobs, rows = HitJobs(out, cfg, SceneStore([])), []
    try:
        for label, window in (("cold", (0.0, 4.0)), ("warm", (4.0, 8.0))):
            started = time.perf_counter()
            job, _ = jobs.submit(1, str(clip), *window)
            while job.status in ("queued", "running"):
                time.sleep(0.02)
            if job.status != "done":
                raise RuntimeError(f"the hit reconstruction failed: {job.error}")
            rows.append({"stage": f"hit-{label}", "views": views, "weights": "random-init vggt-tiny",
                         "request_to_done_s": time.perf_counter() - started})
    finally:
        jobs.close()
        shutil.rmtree(out, ignore_errors=True)
    return rows


def format_table(rows: list[dict]) -> str:
    def cells(values) -> str:
        return " ".join(f"{v:<{-w}}" if w < 0 else f"{v:>{w}}" for v, (_, _, w, _) in zip(values, COLUMNS))

    def show(value, fmt):
        return "-" if value is None else format(value, fmt)

    header = cells([title for _, title, _, _ in COLUMNS])
    return "\n".join([header, "-" * len(header),
                      *(cells([show(r.get(key), fmt) for key, _, _, fmt in COLUMNS]) for r in rows)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_viewer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", default="100000,1000000,5000000", help="scene sizes, comma-separated")
    parser.add_argument("--repeats", type=int, default=5, help="requests per size (the median is reported)")
    parser.add_argument("--no-browser", action="store_true", help="skip the headless Chromium timing")
    parser.add_argument("--hit-views", type=int, default=16,
                        help="views of the hit-to-3D runs (0: skip them)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/tomeray-bench-viewer"),
                        help="where the synthetic output is written (kept and reused)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)

    sizes = [int(n) for n in args.points.split(",") if n]
    args.workdir.mkdir(parents=True, exist_ok=True)
    output = build_output(args.workdir / "recon", sizes)
    print(f"output: {output} ({', '.join(f'{n:,}' for n in sizes)} synthetic points)", flush=True)
    rows = serve_rows(output, sizes, args.repeats, args.workdir, not args.no_browser)
    print(format_table(rows))
    hits = hit_rows(args.workdir, args.hit_views) if args.hit_views > 0 else []
    for r in hits:
        print(f"{r['stage']}: request to done {r['request_to_done_s']:.2f} s "
              f"({r['views']} views, {r['weights']})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows + hits, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
