"""Stage costs, the throughput bound and efficiency (pipeline/core/timing.py, operators/worker.py):
known inputs, then the real decode and embed operators in this process."""

from __future__ import annotations

import math
import os
import time

import numpy as np
import pytest
from media import write_video
from tomeray.operators.worker import WorkerStart, cost_columns, measure, process_started_at, timed_steps
from tomeray.pipeline.core.timing import CostTotals, efficiency, run_costs, startup_timeline


def test_efficiency_on_known_costs():
    # 10 videos in 5 s on 2 cores; decode 2 + embed 6 CPU seconds: bound 2 * 10 / 8 = 2.5 videos/s
    costs = efficiency(10, 5.0, 2.0, {"decode": 2.0, "embed": 6.0})
    assert costs["items_per_s"] == pytest.approx(2.0)
    assert costs["bound_per_s"] == pytest.approx(2.5) and costs["bound_kind"] == "cpu"
    assert costs["efficiency"] == pytest.approx(0.8) and costs["valid"]
    assert costs["cpu_s_per_item"] == pytest.approx({"decode": 0.2, "embed": 0.6})
    # efficiency is the share of cores x seconds spent on stage work
    assert costs["efficiency"] == pytest.approx(8.0 / (2.0 * 5.0))


def test_more_work_than_the_cores_allow_is_reported_as_a_wrong_measurement():
    costs = efficiency(10, 5.0, 2.0, {"decode": 4.0, "embed": 8.0})  # 12 CPU s in 10 core-seconds
    assert costs["efficiency"] == pytest.approx(1.2) and not costs["valid"]


def test_device_actors_bound_the_rate_by_their_busy_time():
    # 1 GPU actor busy 8 s for 10 videos: at most 1.25 videos/s, below the CPU bound of 5
    costs = efficiency(10, 10.0, 2.0, {"decode": 2.0, "embed": 2.0}, device_s=8.0, device_slots=1)
    assert costs["bound_kind"] == "device" and costs["bound_per_s"] == pytest.approx(1.25)
    assert costs["efficiency"] == pytest.approx(0.8)


def _batch(stage: str, started: list[float], done: list[float], cpu: list[float]) -> dict:
    done_a = np.asarray(done)
    return {"path": np.asarray([f"v{i}" for i in range(len(done))]), f"{stage}_cpu_s": np.asarray(cpu),
            f"{stage}_wall_s": done_a - np.asarray(started), f"{stage}_done_at": done_a}


def test_window_counts_only_rows_wholly_inside_it():
    totals = CostTotals(("decode", "embed"))
    totals.add(_batch("decode", [100.0, 101.0], [101.0, 102.0], [0.5, 0.7]))
    totals.add(_batch("embed", [101.5, 103.0], [103.0, 104.0], [1.5, 1.0]))
    assert totals.cpu_s == pytest.approx({"decode": 1.2, "embed": 2.5})
    assert totals.first["decode_started_at"] == 100.0 and totals.first["embed_done_at"] == 103.0
    assert totals.window_cpu_s(100.0, 104.0) == pytest.approx(3.7)
    assert totals.window_cpu_s(101.0, 104.0) == pytest.approx(0.7 + 1.5 + 1.0)  # decode row 1 straddles
    costs = run_costs(totals, 2, 100.0, 104.0, 2.0, steady_from=103.0)
    assert costs["efficiency"] == pytest.approx(3.7 / 8.0)
    assert costs["efficiency_steady"] == pytest.approx(1.0 / 2.0) and costs["steady_s"] == pytest.approx(1.0)


def test_actor_start_up_is_counted_once_per_actor():
    totals = CostTotals(("embed",))
    for init_at, build in ((10.0, 2.0), (11.0, 4.0)):
        start = WorkerStart(5.0, init_at, init_at + build, boot_cpu_s=3.0, import_cpu_s=1.0,
                            build_cpu_s=build)
        for _ in range(2):  # two batches from each actor
            rows = _batch("embed", [20.0, 20.0], [21.0, 21.0], [1.0, 1.0])
            totals.add({**rows, **start.columns("embed", 2)})
    assert totals.startup_cpu() == {"embed_actors": 2, "embed_boot_cpu_s": 3.0, "embed_import_cpu_s": 1.0,
                                    "embed_build_cpu_s": 3.0}
    assert totals.first["embed_init_at"] == 10.0 and totals.first["embed_ready_at"] == 12.0


def test_timeline_is_seconds_from_the_start_in_time_order():
    timeline = startup_timeline(100.0, {"ray_ready_at": 103.0, "never": math.nan}, {"embed_done_at": 101.5})
    assert list(timeline.items()) == [("embed_done_at", 1.5), ("ray_ready_at", 3.0)]


def test_measure_and_timed_steps_time_the_producer_only():
    def slow_items():
        for i in range(2):
            deadline = time.process_time() + 0.05  # CPU work inside the producer
            while time.process_time() < deadline:
                pass
            yield i

    seen = []
    loop_start = time.perf_counter()
    for item, timing in timed_steps(slow_items()):
        time.sleep(0.05)  # the consumer's time is not the producer's
        seen.append((item, timing))
    loop_s = time.perf_counter() - loop_start
    assert [i for i, _ in seen] == [0, 1]
    assert all(timing.cpu_s >= 0.05 for _, timing in seen)  # each item's busy loop
    assert sum(timing.wall_s for _, timing in seen) <= loop_s - 2 * 0.05  # the sleeps are outside
    with measure() as timing:
        pass
    assert timing.done_at == pytest.approx(time.time(), abs=1.0)
    columns = cost_columns("embed", 4, timing)
    assert len(columns["embed_cpu_s"]) == 4 and columns["embed_cpu_s"][0] == pytest.approx(timing.cpu_s / 4)
    assert process_started_at() <= time.time()


def test_real_operators_stay_within_the_cores_they_ran_on(tmp_path, opencv_data):
    """Decode and embed for real, one after the other in this process: their measured work can never
    exceed the CPU the window held, so the efficiency is at most 1 (and here well above 0)."""
    import torch
    from tomeray.operators.video_decode import VideoDecoder
    from tomeray.operators.video_embed import VideoEmbedder

    threads = torch.get_num_threads()
    paths = [str(write_video(tmp_path / f"v{i}.avi", 24, 160, 120, seed=i)) for i in range(2)]
    paths.append(str(opencv_data / "tree.avi"))
    model = {"arch": "ViT-S-32", "pretrained": "none", "preset": "none", "num_frames": 4}
    embedder = VideoEmbedder(model, num_threads=1, device="cpu", precision="fp32")
    try:
        decoder = VideoDecoder(embedder.encoder.image_size, 4)
        totals = CostTotals(("decode", "embed"))
        start = time.time()
        for path in paths:
            for clip in decoder({"path": np.asarray([path]), "key": np.asarray([path])}):
                out = embedder(clip)
                totals.add(out)
        end = time.time()
    finally:
        torch.set_num_threads(threads)
    assert totals.rows == 3 and set(totals.cpu_s) == {"decode", "embed"}
    assert all(v > 0 for v in totals.cpu_s.values())
    assert totals.startup_cpu()["embed_actors"] == 1
    cores = len(os.sched_getaffinity(0))
    costs = run_costs(totals, 3, start, end, cores, steady_from=totals.first["embed_done_at"])
    assert costs["valid"] and 0 < costs["efficiency"] <= 1
    assert 0 <= costs["efficiency_steady"] <= 1
    assert totals.window_cpu_s(start, end) == pytest.approx(sum(totals.cpu_s.values()))
