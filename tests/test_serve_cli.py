"""The command line of the search service: refusals that happen before anything loads (binding
beyond loopback without a token, a taken port, bad arguments) and the ``serve run`` builder."""

from __future__ import annotations

import pytest
from tomeray.pipeline.video.serve.cli import main as serve_main


def test_binding_beyond_loopback_needs_a_token(capsys, monkeypatch):
    monkeypatch.delenv("TOMERAY_SERVE_TOKEN", raising=False)
    assert serve_main(["/nonexistent-index", "--host", "0.0.0.0"]) == 2
    assert "give a token" in capsys.readouterr().err
    assert serve_main(["/nonexistent-index", "--host", "192.168.1.5", "--token", "short"]) == 2
    assert "at least 8" in capsys.readouterr().err
    assert serve_main([]) == 2 and "no index given" in capsys.readouterr().err
    assert serve_main(["/nonexistent-index", "--replicas", "2"]) == 2 and "--ray" in capsys.readouterr().err


def test_a_taken_port_is_a_one_line_error(capsys, tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert serve_main([str(tmp_path), "--port", str(port)]) == 2
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err


def test_serve_run_builder_takes_indexes_replicas_and_overrides():
    from ray.serve import Application
    from tomeray.pipeline.video.serve.ray_app import build

    app = build({"indexes": "/data/a,/data/b", "replicas": "3", "limits.max_k": "50"})
    assert isinstance(app, Application)
    with pytest.raises(ValueError, match="indexes="):
        build({"replicas": "2"})
    with pytest.raises(Exception, match="unknown config key"):
        build({"indexes": "/data/a", "limits.colour": "red"})
