"""Config: precedence, validation that reports every problem together, socket path fallback."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

import pytest

from coordinator.config import Config, ConfigError, load_config, socket_path_for
from coordinator.metrics import Metrics
from coordinator.service import Service


def test_defaults_without_any_source() -> None:
    config = load_config(env={}, flags={})
    assert config.http == ("127.0.0.1", 9428)
    assert config.shards is None  # decided by the data dir (manifest or CPU count)
    assert config.retention_ns is None


def test_flags_beat_env_beat_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('http = "127.0.0.1:1111"\nretention = "7d"\nshards = 3\n')
    env = {"SHARDLOG_HTTP": "127.0.0.1:2222", "SHARDLOG_RETENTION": "1d"}
    config = load_config(config_file=path, env=env, flags={"http": "127.0.0.1:3333", "shards": None})
    assert config.http == ("127.0.0.1", 3333)  # flag
    assert config.retention_ns == 86400 * 10**9  # env over file
    assert config.shards == 3  # file; the None flag means "not given"


def test_every_problem_is_reported_together(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('http = "nowhere"\nretention = "soon"\nshards = 0\nbogus = 1\n')
    with pytest.raises(ConfigError) as info:
        load_config(config_file=path, env={})
    problems = info.value.details["problems"]
    assert len(problems) == 4, problems
    text = info.value.message
    assert "HOST:PORT" in text and "'soon'" in text and "bogus" in text and "positive integer" in text


def test_non_loopback_listener_needs_a_token() -> None:
    with pytest.raises(ConfigError, match="0.0.0.0.*token"):
        load_config(env={}, flags={"http": "0.0.0.0:9428"})
    config = load_config(env={"SHARDLOG_TOKEN": "s3cret"}, flags={"http": "0.0.0.0:9428"})
    assert config.token == "s3cret"


def test_empty_http_disables_it() -> None:
    assert load_config(env={}, flags={"http": ""}).http is None


def test_limits_table(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[limits]\nmax_tags = 8\n")
    assert load_config(config_file=path, env={}).limits.max_tags == 8
    path.write_text("[limits]\nmax_tagz = 8\n")
    with pytest.raises(ConfigError, match="max_tagz"):
        load_config(config_file=path, env={})


def test_parse_in_is_one_of_its_choices() -> None:
    assert load_config(env={}).parse_in == "shards"
    assert load_config(env={"SHARDLOG_PARSE_IN": "coordinator"}).parse_in == "coordinator"
    with pytest.raises(ConfigError, match="parse_in 'shard' must be one of shards, coordinator"):
        load_config(env={"SHARDLOG_PARSE_IN": "shard"})


@pytest.mark.parametrize("setting, in_shards", [("shards", True), ("coordinator", False)])
def test_where_records_are_parsed(setting: str, in_shards: bool) -> None:
    supervisor: Any = types.SimpleNamespace(slots=[None, None])
    service = Service(Config(parse_in=setting), supervisor, Metrics(), data_dir="/nonexistent")
    assert service.intake.parse_in_shards is in_shards


def test_unreadable_config_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.toml"):
        load_config(config_file=tmp_path / "nope.toml", env={})
    bad = tmp_path / "bad.toml"
    bad.write_text("http = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(config_file=bad, env={})


def test_long_data_dir_gets_a_short_socket(tmp_path: Path) -> None:
    short = tmp_path / "d"
    assert socket_path_for(short) == (short / "shardlog.sock").absolute()
    deep = tmp_path / ("x" * 120)
    path = socket_path_for(deep)
    assert len(str(path)) <= 107 and str(path).startswith("/tmp/shardlog-")
    deep.mkdir()
    (deep / "socket.path").write_text("/tmp/recorded.sock")
    assert socket_path_for(deep) == Path("/tmp/recorded.sock")  # what the daemon recorded wins
