"""Every YAML shipped with a front end loads and validates, so none can rot."""

from __future__ import annotations

import pytest

from fs_ray.run_configs import load_any

from .conftest import REPO

SHIPPED = sorted(p for d in ("jobs", "tune", "serve") for p in (REPO / d).glob("configs/*.yaml"))


def test_configs_are_shipped():
    assert any(p.parent.parent.name == "jobs" for p in SHIPPED), "jobs/configs/ holds no YAML"


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(REPO)) for p in SHIPPED])
def test_shipped_yaml_validates(path):
    cfg = load_any(path)
    assert cfg.kind == path.stem.split("_")[0], "a shipped config's file name starts with its kind"
