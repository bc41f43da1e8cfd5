"""Typed run configs: YAML + dotted overrides, validated before anything touches Ray."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fs_ray.cli import fields_help, run_cli
from fs_ray.config import ConfigError, load_config, write_resolved
from fs_ray.run_configs import CONFIG_KINDS, PrepareConfig, PretrainConfig, TuneConfig

from .conftest import REPO


def write(tmp_path, text: str):
    path = tmp_path / "cfg.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_values_and_dotted_overrides(tmp_path):
    path = write(tmp_path, "kind: pretrain\noptim:\n  lr: 0.001\n  max_steps: 10\nrun:\n  name: a\n")
    cfg = load_config(PretrainConfig, path, ["optim.lr=3e-4", "scaling.num_workers=2", "run.name=b"])
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.optim.max_steps == 10  # from the file
    assert cfg.scaling.num_workers == 2
    assert cfg.run.name == "b"
    assert cfg.deepspeed.zero_stage == 0  # default


def test_override_parses_lists_and_booleans(tmp_path):
    cfg = load_config(PrepareConfig, None, ["input.paths=[a.txt, 'b/*.jsonl.gz']", "clean.dedup=true"])
    assert cfg.input.paths == ["a.txt", "b/*.jsonl.gz"]
    assert cfg.clean.dedup is True


def test_unknown_field_is_named_with_a_suggestion(tmp_path):
    path = write(tmp_path, "kind: pretrain\noptim:\n  learning_rate: 0.1\n  max_stesp: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(PretrainConfig, path)
    msg = str(err.value)
    assert "optim.learning_rate: unknown field" in msg
    assert "optim.max_stesp: unknown field (did you mean max_steps?)" in msg
    assert str(path) in msg


def test_ill_typed_field_is_named_with_the_bad_value():
    with pytest.raises(ConfigError) as err:
        load_config(PretrainConfig, None, ["optim.lr=fast", "scaling.num_workers=0"])
    msg = str(err.value)
    assert "optim.lr:" in msg and "'fast'" in msg
    assert "scaling.num_workers:" in msg and "greater than 0" in msg


def test_cross_field_rules_fail_early():
    with pytest.raises(ConfigError, match="offload_params needs zero_stage: 3"):
        load_config(PretrainConfig, None, ["deepspeed.offload_params=true", "deepspeed.zero_stage=2"])
    with pytest.raises(ConfigError, match=r"search_space\.optim\.lr.*low"):
        load_config(TuneConfig, None, ["search_space={optim.lr: {type: loguniform, high: 0.1}}"])


def test_override_into_a_value_is_refused(tmp_path):
    path = write(tmp_path, "optim:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"optim\.lr is a value, not a section"):
        load_config(PretrainConfig, path, ["optim.lr.x=1"])
    with pytest.raises(ConfigError, match=r"optim\.lr: Input should be a valid number"):
        load_config(PretrainConfig, None, ["optim.lr.x=1"])
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(PretrainConfig, None, ["optim.lr"])


def test_bad_files_fail_clearly(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(PrepareConfig, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(PrepareConfig, write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(PrepareConfig, write(tmp_path, "- 1\n- 2\n"))


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(PretrainConfig, None, ["optim.lr=2e-5", "model.overrides={hidden_size: 64}"])
    written = Path(write_resolved(cfg, str(tmp_path / "run")))
    assert written.name == "config.yaml" and written.read_text().startswith("# resolved PretrainConfig")
    again = load_config(PretrainConfig, written)
    assert again == cfg
    assert yaml.safe_load(written.read_text())["optim"]["lr"] == pytest.approx(2e-5)


def test_help_documents_every_field():
    for model in CONFIG_KINDS.values():
        text = fields_help(model)
        assert "Annotated" not in text and "metadata=" not in text, model.__name__  # readable types
        for name in model.model_fields:
            assert name in text
    text = fields_help(PrepareConfig)
    assert "pack.seq_len: int = 512" in text
    assert "Tokens per training sequence" in text


def test_bad_config_exits_2_before_the_job_body_runs(capsys):
    ran = []
    code = run_cli(PrepareConfig, ran.append, argv=["--set", "pack.seq_len=two"])
    assert code == 2 and ran == []
    assert "pack.seq_len" in capsys.readouterr().err


def test_print_config_shows_resolved_values(capsys):
    code = run_cli(PrepareConfig, lambda cfg: 1, argv=["--set", "pack.seq_len=128", "--print-config"])
    assert code == 0
    assert yaml.safe_load(capsys.readouterr().out)["pack"]["seq_len"] == 128


def test_front_end_help_runs_as_a_command():
    out = subprocess.run(
        [sys.executable, "jobs/prepare.py", "--help"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert "--set KEY=VALUE" in out and "input.text_field" in out and "max_bad_fraction" in out


def test_storage_uris_keep_their_query_and_the_cluster_default_applies(monkeypatch):
    from fs_ray.run_configs import RunSection
    from fs_ray.storage import join

    minio = "s3://bucket/runs?endpoint_override=127.0.0.1:9000&scheme=http"
    assert join(minio, "exp", "config.yaml") == "s3://bucket/runs/exp/config.yaml?endpoint_override=127.0.0.1:9000&scheme=http"
    assert RunSection(name="exp", storage_path=minio).output_dir().startswith("s3://bucket/runs/exp?")
    assert join("runs/", "exp") == "runs/exp"
    monkeypatch.setenv("FS_RAY_STORAGE", "gs://team/fs_ray")
    assert RunSection(name="exp").output_dir() == "gs://team/fs_ray/exp"
    monkeypatch.delenv("FS_RAY_STORAGE")
    assert RunSection(name="exp").output_dir() == "runs/exp"


def test_a_job_server_url_in_ray_address_becomes_the_local_clusters_gcs_address(tmp_path, monkeypatch):
    """The README exports RAY_ADDRESS=http://127.0.0.1:8266 (for `ray job submit`); a run started with
    plain python must still reach that cluster (ray.init refuses an HTTP address)."""
    import json as _json

    from fs_ray.cli import _driver_address

    monkeypatch.setenv("FS_RAY_CLUSTER_DIR", str(tmp_path))
    (tmp_path / "cluster.json").write_text(
        _json.dumps({"dashboard_url": "http://127.0.0.1:8266", "gcs_address": "127.0.0.1:6390"})
    )
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8266/")
    assert _driver_address() is None and os.environ["RAY_ADDRESS"] == "127.0.0.1:6390"
    monkeypatch.setenv("RAY_ADDRESS", "http://10.0.0.5:8265")
    problem = _driver_address()
    assert "is a job server URL" in problem and "RAY_ADDRESS=<head>:6379" in problem and "ray job submit" in problem
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert _driver_address() is None and os.environ["RAY_ADDRESS"] == "10.0.0.5:6379"
