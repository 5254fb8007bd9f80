"""Every recipe in pipelines/ validates and resolves a stage plan; the Dockerfile matches pyproject."""

import json
import re
import tomllib
from pathlib import Path

import pytest
from conftest import cli

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "pipelines").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipe_dry_run_prints_the_plan(recipe):
    result = cli("fit", "--config", recipe, "--dry-run")
    assert result.exit_code == 0, result.output
    resolved = json.loads(result.stdout)
    stages = resolved["plan"]["stages"]
    assert stages and sum(s["epochs"] for s in stages) >= len(stages)
    assert resolved["config"]["data"]


def test_command_line_overrides_the_recipe_and_unknown_keys_are_named(tmp_path):
    result = cli("fit", "--config", ROOT / "pipelines" / "shapes.yaml", "--epochs", "4", "--dry-run")
    resolved = json.loads(result.stdout)
    assert resolved["config"]["epochs"] == 4 and resolved["config"]["backbone"] == "mobilenet_v2"
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: builtin:shapes\nepoch: 3\n")
    result = cli("fit", "--config", bad, "--dry-run")
    assert result.exit_code == 2 and "unknown key 'epoch'" in result.stderr


def test_dockerfile_is_pinned_and_installs_the_gpu_extra():
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    assert re.fullmatch(r"tensorflow/tensorflow:\d+\.\d+\.\d+-gpu", base)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "gpu" in extras and any("onnxruntime-gpu" in d for d in extras["gpu"])
    assert '".[gpu]"' in text and "USER tltf" in text and 'ENTRYPOINT ["tltf"]' in text
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["tltf"] == "tltf.cli:main"
