"""``tomeray demo``: index the opencv-doc sample videos, then search them by text and by video.

    tomeray demo                      # -> ./out/demo-index, then a few searches
    tomeray search out/demo-index "people walking down a street"

It runs the real pipeline (``run_index`` on a local Ray cluster, then ``VideoSearcher``) on
Debian's opencv-doc samples (``apt-get install opencv-doc``):
vtest.avi (pedestrians), Megamind.avi and Megamind_bugy.avi (animation), tree.avi. A truncated copy
of tree.avi is added on purpose, to show how a damaged input is reported (the errors table) while
the rest is indexed. A rerun resumes: what is indexed is skipped.

Weights: OpenAI's CLIP ViT-B/32 (``pretrained=openai``). Where they cannot be downloaded, the demo
says so and carries on with random weights, which the manifest and every output label as such
(only the demo falls back; ``tomeray index`` fails instead).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from tomeray.models.errors import TomerayError, WeightsError
from tomeray.pipeline.core.runner import run_command

__all__ = ["DEMO_VIDEOS", "TEXT_QUERIES", "main", "run_demo"]

log = logging.getLogger(__name__)

DEMO_VIDEOS = ("vtest.avi", "Megamind.avi", "tree.avi", "Megamind_bugy.avi")
TEXT_QUERIES = ("people walking down a street", "an animated cartoon character", "a tree moving in the wind")
VIDEO_QUERY = "tree.avi"
TRUNCATED = "tree-truncated.avi"
DEFAULT_DATA = "/usr/share/doc/opencv-doc/examples/data"


def sample_data_dir(data: str | os.PathLike | None = None) -> Path:
    folder = Path(data or os.environ.get("TOMERAY_SAMPLE_DATA") or DEFAULT_DATA)
    missing = [name for name in DEMO_VIDEOS if not (folder / name).is_file()]
    if missing:
        raise TomerayError(f"the demo's sample videos are missing under {folder} ({', '.join(missing)}): "
                           "install them with 'apt-get install -y opencv-doc', or point --data (or "
                           "TOMERAY_SAMPLE_DATA) at a folder holding them")
    return folder


def write_truncated_copy(source: Path, target: Path) -> Path:
    """The first half of ``source``: a damaged file whose container declares more than it holds."""
    if not target.is_file():
        from tomeray.pipeline.core.atomic import atomic_write_bytes

        data = source.read_bytes()
        atomic_write_bytes(target, data[: len(data) // 2])
    return target


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (where open_clip gets weights) answers a TCP connect."""
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def _reset_for_new_weights(out: Path) -> None:
    """Delete a demo index (only a folder that is an index or empty), so it can be rebuilt."""
    if out.is_dir() and ((out / "manifest.json").is_file() or not any(out.iterdir())):
        shutil.rmtree(out)
    elif out.exists():
        raise TomerayError(f"--fresh: '{out}' is not an index directory; not deleting it")


def run_demo(
    out: str | os.PathLike = "out/demo-index",
    *,
    data: str | os.PathLike | None = None,
    pretrained: str = "openai",
    k: int = 3,
    overrides: list[str] | tuple[str, ...] = (),
    fresh: bool = False,
    echo=print,
) -> int:
    """Index the sample videos into ``out``, run the demo searches and print everything."""
    from tomeray.pipeline.core.output import IncompatibleOutputError
    from tomeray.pipeline.video.job import run_index
    from tomeray.pipeline.video.layout import IndexLayout

    folder = sample_data_dir(data)
    out = Path(out)
    if fresh:
        _reset_for_new_weights(out)
    inputs_dir = out.parent / f"{out.name}-inputs"
    inputs = [str(folder / name) for name in DEMO_VIDEOS]
    inputs.append(str(write_truncated_copy(folder / "tree.avi", inputs_dir / TRUNCATED)))
    echo(f"tomeray demo: indexing {len(inputs)} videos from {folder} (+ a deliberately truncated copy "
         f"of tree.avi in {inputs_dir}) into {out}")

    model = [f"model.pretrained={pretrained}", *overrides]
    started = time.perf_counter()
    try:
        summary = run_index(inputs, out, model)
    except WeightsError as e:
        echo(f"\nNOTE: the pretrained weights could not be loaded: {e}")
        echo("NOTE: continuing with RANDOM weights (model.pretrained=none). The pipeline runs end to end, "
             "but scores and rankings are NOT meaningful. With network access (or the weights in the "
             "Hugging Face cache) rerun 'tomeray demo --fresh' for real retrieval.\n")
        summary = run_index(inputs, out, [*model, "model.pretrained=none"])
    except IncompatibleOutputError as e:
        raise TomerayError(f"{e}. The demo index was built with other weights: rerun with --fresh to "
                           "rebuild it, or pick another --out") from None

    random = summary.weights_id.startswith("random")
    label = "  (RANDOM weights: not meaningful for retrieval)" if random else ""
    echo(f"\nindexed {summary.indexed} videos, {summary.skipped} already indexed, {summary.failed} failed "
         f"in {summary.seconds:.1f} s -> {out}")
    echo(f"weights: {summary.weights_id}{label}")
    errors = IndexLayout(out).read_errors()
    if errors.num_rows:
        echo(f"\nerrors table ({out / 'errors'}): inputs that could not be indexed")
        for row in errors.to_pylist():
            echo(f"  {row['path']}\n    [{row['stage']}] {row['error_type']}: {row['message']}")

    from tomeray.pipeline.video.search import VideoSearcher
    from tomeray.pipeline.video.search_cli import format_results

    searcher = VideoSearcher(out)
    for query in TEXT_QUERIES:
        echo(f"\ntext query: {query!r}")
        echo(format_results(searcher.search(query, k=k)))
    video = folder / VIDEO_QUERY
    echo(f"\nvideo query: {video} (videos similar to it; itself first)")
    echo(format_results(searcher.search(str(video), k=k)))
    echo(f"\ndone in {time.perf_counter() - started:.1f} s. Next:\n"
         f"  tomeray search {out} \"your query\" -k 5\n"
         f"  tomeray search {out} {video} --json\n"
         f"  tomeray index /your/videos --out my-index")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tomeray demo",
        description="Index the opencv-doc sample videos with the TempMe encoder, then search them.")
    parser.add_argument("--out", default="out/demo-index", help="index directory (default out/demo-index)")
    parser.add_argument("--data", default=None, help=f"folder of the sample videos (default {DEFAULT_DATA})")
    parser.add_argument("--pretrained", default="openai",
                        help="open_clip tag or checkpoint path (default openai; falls back to random "
                             "weights when unavailable)")
    parser.add_argument("-k", type=int, default=3, help="results per query (default 3)")
    parser.add_argument("--fresh", action="store_true", help="delete the demo index first and rebuild it")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="index config overrides, e.g. model.preset=tempme-fast "
                             "(see 'tomeray config index')")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if "huggingface_hub" not in sys.modules and not os.environ.get("HF_HUB_OFFLINE") and not _hub_reachable():
        # Without a network, downloads only fail after a minute of retries: use the cache alone.
        print("tomeray demo: the Hugging Face hub is unreachable; looking for cached weights only")
        os.environ["HF_HUB_OFFLINE"] = "1"
    return run_command("tomeray demo", lambda: run_demo(args.out, data=args.data, pretrained=args.pretrained,
                                                        k=args.k, overrides=args.overrides, fresh=args.fresh))


if __name__ == "__main__":
    sys.exit(main())
