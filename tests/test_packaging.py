"""The installed form: one import namespace, layers that import downward, small modules.

The top-level folders (models/, operators/, pipeline/, jobs/, configs/) install as sub-packages of
``tomeray``; the wheel test builds the real distribution, installs it into a fresh virtual
environment without the source tree and imports it from outside the repository."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"models": "tomeray.models", "operators": "tomeray.operators", "pipeline": "tomeray.pipeline",
           "jobs": "tomeray.jobs", "configs": "tomeray.configs"}
MAX_LINES = 450


def package_modules() -> list[Path]:
    return sorted(p for folder in FOLDERS for p in (REPO / folder).rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_every_package_folder_is_listed_for_installation():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {package: folder for folder, package in FOLDERS.items()}
    found = {FOLDERS[init.relative_to(REPO).parts[0]] + "".join(f".{p}" for p in init.parent.relative_to(
        REPO).parts[1:]) for folder in FOLDERS for init in (REPO / folder).rglob("__init__.py")}
    # folders of files that are not Python (the web page) are listed too, with their package data
    data_only = set(config["package-data"]) - found
    folder_of = {package: folder for folder, package in FOLDERS.items()}
    for package in data_only:
        _, top, *rest = package.split(".")
        assert REPO.joinpath(folder_of[f"tomeray.{top}"], *rest).is_dir(), package
    assert set(config["packages"]) == found | data_only


def test_code_imports_only_through_the_tomeray_namespace():
    """``import models...`` works from the repository root only; installed, it fails."""
    files = [*package_modules(), *REPO.glob("tests/*.py")]
    offenders = {f"{path.relative_to(REPO)}: {name}" for path in files
                 for name in imported_modules(path) if name.split(".")[0] in FOLDERS}
    assert not offenders


@pytest.mark.parametrize("layer, forbidden", [
    ("models", ("tomeray.operators", "tomeray.pipeline", "tomeray.jobs")),
    ("operators", ("tomeray.pipeline", "tomeray.jobs")),
    ("pipeline", ("tomeray.jobs",)),
])
def test_layers_import_downward_only(layer, forbidden):
    upward = {f"{path.relative_to(REPO)}: {name}" for path in (REPO / layer).rglob("*.py")
              for name in imported_modules(path) if name.startswith(forbidden)}
    assert not upward


def test_modules_stay_small():
    long = {str(p.relative_to(REPO)): n for p in package_modules()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long


def test_the_two_products_do_not_import_each_other():
    # training builds on video (its decoding and embedding graph); the service builds on video and
    # reconstruction (it puts them on one server); no product imports training or the service
    pairs = (("video", "reconstruction"), ("reconstruction", "video"), ("video", "training"),
             ("reconstruction", "training"), ("training", "reconstruction"), ("video", "service"),
             ("reconstruction", "service"), ("training", "service"), ("service", "training"))
    for product, other in pairs:
        files = (REPO / "pipeline" / product).rglob("*.py")
        crossing = {f"{path.relative_to(REPO)}: {name}" for path in files
                    for name in imported_modules(path) if name.startswith(f"tomeray.pipeline.{other}")}
        assert not crossing


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_non_editable_install_adds_only_tomeray(tmp_path):
    """``pip install .`` into a fresh environment: the distribution's only top-level name is
    ``tomeray``, and it imports and runs from outside the repository."""
    # Built from a copy of the tracked files: setuptools writes build/ into the source tree.
    source = tmp_path / "source"
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                             capture_output=True, text=True).stdout.split()
    for name in tracked:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(wheels), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("tomeray-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        top_level = next(n for n in names if n.endswith(".dist-info/top_level.txt"))
        assert z.read(top_level).decode().split() == ["tomeray"]
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")} == {"tomeray"}
    assert not any(n.startswith("tomeray/tests") for n in names)
    assert "tomeray = tomeray.pipeline.cli:main" in entry_points
    assert "tomeray/configs/index.yaml" in names

    # A fresh environment: the dependencies come from this one, tomeray only from the wheel.
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True, timeout=120)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True, timeout=300)
    added = sorted(p.name for p in site.iterdir() if p.name not in ("dependencies.pth", "__pycache__"))
    assert [n for n in added if not n.endswith(".dist-info")] == ["tomeray"], added

    outside = tmp_path / "elsewhere"
    outside.mkdir()

    def run(*argv: str) -> str:
        proc = subprocess.run(argv, cwd=outside, capture_output=True, text=True, timeout=300,
                              env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    where = run(str(python), "-c", "import tomeray.models.merging as m, tomeray.pipeline, tomeray.operators, "
                                   "tomeray.jobs; print(m.__file__)")
    assert where.strip().startswith(str(site))  # the installed copy, not the source tree
    assert "index" in run(str(env_dir / "bin" / "tomeray"), "--help")
    assert "--out" in run(str(python), "-m", "tomeray.jobs.index_videos", "--help")
