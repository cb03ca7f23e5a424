"""Shared test fixtures: paths of the reference fixtures and of the opencv-doc sample media."""

from __future__ import annotations

import os
from pathlib import Path

import cv2  # noqa: F401 - before any test module imports decord (see operators.video_decode.load_decord)
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
OPENCV_DATA = Path(os.environ.get("TOMERAY_SAMPLE_DATA", "/usr/share/doc/opencv-doc/examples/data"))


# The files that take minutes, longest first. They are collected first, so that with the suite shared
# between two workers (whole files each) none of them starts last and runs on alone at the end.
LONG_FILES = ("test_train_job.py", "test_readme_cluster.py", "test_index_cluster.py", "test_demo.py",
              "test_reconstruct_cluster.py", "test_bench_runs.py")


def pytest_collection_modifyitems(config, items):
    items.sort(key=lambda item: LONG_FILES.index(item.path.name) if item.path.name in LONG_FILES
               else len(LONG_FILES))  # stable: every file keeps its own order


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def opencv_data() -> Path:
    """Debian's opencv-doc sample media; the README's install step provides it."""
    if not (OPENCV_DATA / "vtest.avi").is_file():
        raise RuntimeError(
            f"sample media missing under {OPENCV_DATA}: run 'apt-get install -y opencv-doc' "
            "(the README's install step does) or set TOMERAY_SAMPLE_DATA"
        )
    return OPENCV_DATA


@pytest.fixture(scope="module")
def tempme_tower(fixtures_dir):
    """The TempMe fixture's tiny open_clip tower (width 64, 12 layers, 4 heads, patch 32, 224 px,
    QuickGELU) with the fixture weights. TempMe's LoRA (B = 0) and temporal position embeddings
    (= 0) are exact no-ops when untrained, so they are left out."""
    from open_clip.model import QuickGELU
    from open_clip.transformer import VisionTransformer
    from safetensors.torch import load_file

    state = load_file(fixtures_dir / "tempme_tiny_visual_state_dict.safetensors")
    tower = VisionTransformer(image_size=224, patch_size=32, width=64, layers=12, heads=4, mlp_ratio=4.0,
                              output_dim=32, act_layer=QuickGELU)
    tower.load_state_dict({k: v for k, v in state.items() if "TVPt_" not in k}, strict=True)
    return tower.eval()


@pytest.fixture(scope="session")
def tempme_trained_state(fixtures_dir) -> dict:
    """Fixture 3's visual TVPt_* tensors under the reference's tower keys
    (``transformer.resblocks.N.attn.TVPt_LoRA_a`` ...): Fixture 2's values (LoRA A) with Fixture 3's
    nonzero LoRA B and temporal embeddings on top, as the fixture README prescribes."""
    from safetensors.torch import load_file

    base = load_file(fixtures_dir / "tempme_tiny_visual_state_dict.safetensors")
    trained = load_file(fixtures_dir / "tempme_tiny_trained_state_dict.safetensors")
    return {**{k: v for k, v in base.items() if "TVPt_" in k}, **trained}


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray cluster for the whole test session (2 CPUs, like CI)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The test tensors are small: one intra-op thread is as fast, and spare threads spin-waiting
    next to Ray workers on a 2-core machine made the same tests ~10x slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def served_corpus(opencv_data, tmp_path_factory) -> Path:
    """The search-service corpus (tests/serving.py): opencv-doc videos, one as WebM."""
    from serving import make_corpus

    return make_corpus(tmp_path_factory.mktemp("served") / "corpus", opencv_data)


@pytest.fixture(scope="session")
def served_index(ray_local, served_corpus, tmp_path_factory) -> Path:
    """The corpus indexed once by 'tomeray index' (random ViT-S-32 weights, 4 s segments)."""
    from serving import build_index

    return build_index(served_corpus, tmp_path_factory.mktemp("served-index") / "idx")


@pytest.fixture(scope="session")
def server(served_index):
    """'tomeray serve' over the served index on a free loopback port, with a bearer token."""
    from serving import TOKEN
    from tomeray.jobs.bench_serve import Server

    options = ["--port", "0", "--token", TOKEN, "server.torch_threads=1", "inference.device=cpu"]
    with Server([str(served_index), *options], timeout=300) as process:
        yield process


@pytest.fixture(scope="session")
def served_recon(ray_local, opencv_data, tmp_path_factory) -> Path:
    """'tomeray reconstruct' of opencv-doc chessboard views (random vggt-tiny weights), with GLB."""
    import shutil

    from tomeray.pipeline.reconstruction.cli import main

    root = tmp_path_factory.mktemp("served-recon")
    (root / "scenes" / "chess board").mkdir(parents=True)
    for name in ("left01.jpg", "left02.jpg", "left03.jpg", "left04.jpg"):
        shutil.copy(opencv_data / name, root / "scenes" / "chess board" / name)
    out = root / "recon"
    code = main([str(root / "scenes"), "--out", str(out), "model.arch=vggt-tiny", "model.pretrained=none",
                 "ray.progress=false", "points.max_points=20000", "export.glb=true"])
    assert code == 0, f"tomeray reconstruct exited with {code}"
    return out
