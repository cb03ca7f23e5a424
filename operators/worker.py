"""What every stage records about where it ran."""

from __future__ import annotations

__all__ = ["node_id"]


def node_id() -> str:
    """The Ray node id of this worker ("local" outside Ray): diagnostics only, never raises."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
    except Exception:  # noqa: BLE001 - node ids are diagnostics only
        return "unknown"
