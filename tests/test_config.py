"""Config loading: schema defaults < YAML < key=value overrides, with errors that name the key."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import yaml
from tomeray.pipeline.core.config import MISSING, ConfigError, load_config, save_config


@dataclass
class Inner:
    ratio: float = 0.5
    enabled: bool = True


@dataclass
class Schema:
    name: str = "demo"
    count: int = 3
    inner: Inner = field(default_factory=Inner)
    tags: list[str] = field(default_factory=list)
    extra: Inner | None = None


@dataclass
class NeedsValue:
    path: str = MISSING


def test_config_layers_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("count: 7\ninner:\n  ratio: 0.25\n")
    cfg = load_config(Schema, path, ["inner.enabled=false", "tags=[a,b]"])
    assert isinstance(cfg, Schema) and isinstance(cfg.inner, Inner)
    got = (cfg.name, cfg.count, cfg.inner.ratio, cfg.inner.enabled, cfg.tags)
    assert got == ("demo", 7, 0.25, False, ["a", "b"])


def test_config_unknown_key_names_key_and_valid_keys(tmp_path):
    with pytest.raises(ConfigError, match=r"'inner\.ratoi'.*enabled, ratio"):
        load_config(Schema, None, ["inner.ratoi=3"])
    path = tmp_path / "c.yaml"
    path.write_text("cuont: 1\n")
    with pytest.raises(ConfigError, match=r"'cuont'.*count, extra, inner, name, tags"):
        load_config(Schema, path)
    with pytest.raises(ConfigError, match=r"'extra\.bogus'.*enabled, ratio"):
        load_config(Schema, None, ["extra.bogus=1"])
    assert load_config(Schema, None, ["extra.ratio=0.1"]).extra.ratio == 0.1


def test_config_wrong_type_names_key_and_type():
    with pytest.raises(ConfigError, match=r"'count'.*int.*'many'"):
        load_config(Schema, None, ["count=many"])
    with pytest.raises(ConfigError, match=r"'inner\.ratio'.*float"):
        load_config(Schema, {"inner": {"ratio": "high"}})


def test_config_missing_value_names_key():
    with pytest.raises(ConfigError, match=r"'path' has no value"):
        load_config(NeedsValue)
    assert load_config(NeedsValue, None, ["path=/x"]).path == "/x"


def test_config_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Schema, None, ["count"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Schema, tmp_path / "nope.yaml")


def test_config_is_saved_resolved(tmp_path):
    cfg = load_config(Schema, None, ["count=9"])
    out = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert yaml.safe_load(out.read_text()) == {
        "name": "demo", "count": 9, "inner": {"ratio": 0.5, "enabled": True}, "tags": [], "extra": None
    }
    assert not list(out.parent.glob(".*.tmp"))


def test_cli_help_lists_the_commands(capsys):
    from tomeray.pipeline.cli import available_commands, main

    expected = {"demo", "index", "search", "reconstruct", "config", "train", "eval-retrieval"}
    assert expected <= set(available_commands())
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in available_commands():
        assert name in out


@pytest.mark.parametrize("job", ["index", "reconstruct", "train", "eval-retrieval"])
def test_cli_config_prints_resolved_job_config(job, capsys):
    from tomeray.pipeline.cli import main

    assert main(["config", job, "model.pretrained=none"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["pretrained"] == "none"
    assert main(["config", job, "model.bogus=1"]) == 2
    err = capsys.readouterr().err  # errors go to stderr, as every tomeray command's do
    assert err.startswith("tomeray config: error: unknown config key 'model.bogus'")
