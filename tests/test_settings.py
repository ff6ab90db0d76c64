"""Project settings: runtime and environment parameters override single keys, never whole blocks of base."""

from __future__ import annotations

from pathlib import Path

from kedro.config import OmegaConfigLoader

from maf_pipeline.settings import CONFIG_LOADER_ARGS

REPO = Path(__file__).resolve().parents[1]


def test_nested_runtime_params_keep_the_rest_of_the_block(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    (conf / "base").mkdir(parents=True)
    (conf / "sample").mkdir()
    (conf / "base" / "parameters.yml").write_text(
        "features:\n  image_encoder: {arch: vgg16, input_size: 224}\n  cache: {enabled: true}\n"
        "training: {epochs: 200, learning_rate: 0.0001}\n"
    )
    (conf / "sample" / "parameters.yml").write_text("training: {epochs: 100}\n")  # an env overriding one key
    runtime = {"features": {"image_encoder": {"input_size": 64}}, "training": {"epochs": 12}}
    params = OmegaConfigLoader(str(conf), env="sample", runtime_params=runtime, **CONFIG_LOADER_ARGS)[
        "parameters"
    ]
    assert params["features"] == {
        "image_encoder": {"arch": "vgg16", "input_size": 64},
        "cache": {"enabled": True},
    }
    assert params["training"] == {"epochs": 12, "learning_rate": 0.0001}


def test_the_sample_environment_keeps_every_base_block() -> None:
    base = OmegaConfigLoader(str(REPO / "conf"), env="base", **CONFIG_LOADER_ARGS)["parameters"]
    sample = OmegaConfigLoader(str(REPO / "conf"), env="sample", **CONFIG_LOADER_ARGS)["parameters"]
    assert set(base) <= set(sample)
    for block in base:
        if isinstance(base[block], dict):
            assert set(base[block]) <= set(sample[block]), block
