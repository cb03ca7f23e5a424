"""A job's output directory: a manifest that pins the settings results depend on, the resolved
config of the latest run, and one record per run.

```
<root>/manifest.json      pinned settings + counts; the last write of every run
<root>/config.yaml        the resolved configuration of the latest run
<root>/runs/<run_id>.json what each run did (counts, timings, nodes)
```

A rerun into the same directory resumes: it must use the same pinned settings, and is refused
with the list of what differs otherwise (``check_compatible``, which also decides whether two
outputs can be merged and whether a model may search an index). Each product subclasses
``JobOutput`` with its own files and pinned paths.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tomeray.models.errors import InputError
from tomeray.pipeline.core.atomic import (
    atomic_write_json,
    remove_stale_temporaries,
    tomeray_version,
    utc_now,
)

__all__ = ["IncompatibleOutputError", "JobOutput", "OutputError", "check_compatible", "new_run_id",
           "settings_diff"]


class OutputError(InputError):
    """An output directory is missing, unreadable, or not what the command expects."""


class IncompatibleOutputError(OutputError):
    """Two sets of pinned settings differ (a rerun, a merge, or a model against an index)."""


def new_run_id() -> str:
    """A sortable, unique id for one run (it prefixes the files the run writes)."""
    now = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{now}-{os.urandom(3).hex()}"


_ABSENT = object()


def _get(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return _ABSENT
        tree = tree[part]
    return tree


def _leaves(value: Any, prefix: str) -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for key, sub in value.items():
            out.update(_leaves(sub, f"{prefix}.{key}"))
        return out
    return {prefix: value}


def settings_diff(a: dict, b: dict, paths: Iterable[str]) -> list[tuple[str, Any, Any]]:
    """``(dotted key, value in a, value in b)`` for every leaf under ``paths`` that differs."""
    diff = []
    for path in paths:
        left, right = _get(a, path), _get(b, path)
        if left == right:
            continue
        la = {} if left is _ABSENT else _leaves(left, path)
        lb = {} if right is _ABSENT else _leaves(right, path)
        for key in sorted(set(la) | set(lb)):
            va, vb = la.get(key, _ABSENT), lb.get(key, _ABSENT)
            if va != vb:
                diff.append((key, va, vb))
    return diff


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else json.dumps(value, default=str)[:120]


def check_compatible(a: dict, b: dict, paths: Iterable[str], what_a: str, what_b: str, hint: str) -> None:
    """Refuse to combine results whose pinned settings differ, listing each difference."""
    diff = settings_diff(a, b, paths)
    if diff:
        lines = ", ".join(f"{key} = {_show(va)} vs {_show(vb)}" for key, va, vb in diff[:8])
        more = f" and {len(diff) - 8} more" if len(diff) > 8 else ""
        raise IncompatibleOutputError(f"{what_a} and {what_b} are incompatible; they differ in: "
                                      f"{lines}{more} (first value: {what_a}); {hint}")


class JobOutput:
    """Paths, manifest and run records of one output directory. Cheap to create: it touches the disk
    only when asked. Subclasses set ``kind`` (words for messages), ``command`` (what makes one),
    ``schema_version``, ``pinned`` (dotted manifest paths a rerun must match) and ``has_results``."""

    kind = "output"
    command = "tomeray"
    schema_version = 1
    pinned: tuple[str, ...] = ()
    # what a rerun with other pinned settings should do instead
    incompatible_hint = "use the same settings to resume, or a new --out directory"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.manifest_path = self.root / "manifest.json"
        self.config_path = self.root / "config.yaml"
        self.runs_dir = self.root / "runs"
        self.errors_dir = self.root / "errors"  # every job's error table (pipeline.core.errors_table)

    def __repr__(self) -> str:
        return f"{type(self).__name__}('{self.root}')"

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def has_results(self) -> bool:
        """Whether results lie in the directory (they are not trusted without a manifest)."""
        return False

    # ------------------------------------------------------------------------- manifest
    def manifest_stamp(self) -> tuple:
        """The manifest file's identity, () when absent: every job run replaces the file
        (atomically), so a server compares stamps to notice a newer output."""
        try:
            st = self.manifest_path.stat()
        except OSError:
            return ()
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def read_manifest(self) -> dict:
        if not self.manifest_path.is_file():
            raise OutputError(f"no {self.kind} at '{self.root}' (manifest.json is missing); "
                              f"make one with '{self.command}'")
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise OutputError(f"{self.kind} manifest '{self.manifest_path}' is unreadable: {e}") from None
        version = manifest.get("schema_version") if isinstance(manifest, dict) else None
        if not isinstance(version, int):
            raise OutputError(f"'{self.manifest_path}' is not a tomeray {self.kind} manifest")
        if version > self.schema_version:
            raise OutputError(f"{self.kind} '{self.root}' has schema version {version}, newer than this "
                              f"tomeray understands ({self.schema_version}); upgrade tomeray")
        return manifest

    def write_manifest(self, manifest: dict) -> Path:
        return atomic_write_json(self.manifest_path, manifest)

    def open(self, header: dict, what: str = "this run's settings") -> dict:
        """The manifest of this output, created from ``header`` when new (pinning the settings before
        any result exists); an existing one must match ``header`` on ``pinned``."""
        self.root.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.root)
        if self.exists():
            manifest = self.read_manifest()
            check_compatible(manifest, header, self.pinned, f"{self.kind} '{self.root}'", what,
                             self.incompatible_hint)
            return manifest
        if self.has_results():
            raise OutputError(f"'{self.root}' holds results but no manifest.json, so the settings that "
                              "made them are unknown; move them away or use a new --out directory")
        now = utc_now()
        manifest = {**header, "schema_version": self.schema_version, "created": now, "updated": now,
                    "tomeray_version": tomeray_version()}
        self.write_manifest(manifest)
        return manifest

    def finish(self, manifest: dict, **updates: Any) -> dict:
        """Write the manifest with ``updates`` as the last write of a run."""
        manifest = {**manifest, **updates, "schema_version": self.schema_version, "updated": utc_now(),
                    "tomeray_version": tomeray_version()}
        self.write_manifest(manifest)
        return manifest

    # ------------------------------------------------------------------------- runs
    def run_record_path(self, run_id: str) -> Path:
        return self.runs_dir / f"{run_id}.json"

    def write_run_record(self, run_id: str, record: dict) -> Path:
        return atomic_write_json(self.run_record_path(run_id), {"run_id": run_id, **record})

    def run_records(self) -> list[dict]:
        """Every run's record, oldest first (run ids sort by start time)."""
        records = []
        for path in sorted(self.runs_dir.glob("*.json")):
            try:
                records.append(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
        return records
