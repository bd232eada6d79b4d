"""The application config a bench runs: which serve config by default, loaded, with engine_args changed."""

from __future__ import annotations

from pathlib import Path

from bench.lib import ROOT


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def default_serve_config() -> Path:
    """serve_config.yaml (the 24 GB GPU plan) where CUDA is visible, configs/cpu.yaml otherwise."""
    return ROOT / "serve_config.yaml" if cuda_available() else ROOT / "configs" / "cpu.yaml"


def load_app_config(serve_config: Path, source: str | None = None):
    """The application's config from a serve config file, the model source optionally replaced."""
    from serve_app.config import OCRAppConfig

    config = OCRAppConfig.from_serve_config(serve_config)
    if config.model.family != "hunyuan_vl":
        raise SystemExit(f"{serve_config}: model family {config.model.family!r}; these benches need hunyuan_vl")
    if source:
        config = config.model_copy(update={"model": config.model.model_copy(update={"source": source})})
    return config


def with_engine_args(config, **updates):
    """A copy of `config` whose decoder engine_args carry `updates` (None values remove a key)."""
    args = {**config.decoder.engine_args, **updates}
    args = {key: value for key, value in args.items() if value is not None}
    return config.model_copy(update={"decoder": config.decoder.model_copy(update={"engine_args": args})})


def with_placement(config, placement: str):
    """`config` with the vision tower in `placement` (encoder.placement). On a GPU, in_decoder gives the decoder the
    encoder's GPU share too: one process then holds both (the memory plan checks that it fits)."""
    updates = {"encoder": config.encoder.model_copy(update={"placement": placement})}
    if placement == "in_decoder" and config.encoder.placement == "split" and config.model.device == "cuda":
        share = round(min(1.0, config.decoder.num_gpus + config.encoder.num_gpus * config.encoder.max_replicas), 4)
        updates["decoder"] = config.decoder.model_copy(update={"num_gpus": share})
    return config.model_copy(update=updates)

