"""The builder: validates the config and wires the whole graph, binding every deployment here.

`serve run serve_config.yaml` calls `build_app` with the YAML's `args`.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from ray.serve import Application

from serve_app.config import OCRAppConfig
from serve_app.stages.decoder import Decoder
from serve_app.engines import DecoderEngine
from serve_app.stages.ingress import OCRIngress
from serve_app.stages.preprocessor import Preprocessor
from serve_app.stages.vision_encoder import VisionEncoder


class ConfigError(ValueError):
    """Invalid application config; the message names each offending field."""


def load_config(args: OCRAppConfig | dict[str, Any] | None) -> OCRAppConfig:
    if isinstance(args, OCRAppConfig):
        config = args
    else:
        try:
            config = OCRAppConfig.model_validate(args or {})
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(part) for part in item['loc']) or '(root)'}: {item['msg']}" for item in error.errors()
            )
            raise ConfigError(f"Invalid serve_app config: {problems}") from None
    if config.decoder.engine == "vllm":
        from serve_app.engines.vllm_engine import validate_engine_args

        try:
            validate_engine_args(config.decoder.engine_args)
        except ValueError as error:
            raise ConfigError(f"Invalid serve_app config: decoder.engine_args: {error}") from None
    return config


def build_app(args: dict[str, Any]) -> Application:
    """Entry point of `serve run` (Ray Serve calls it with the config file's `args`)."""
    return build_graph(load_config(args))


def build_graph(config: OCRAppConfig, engine_class: type[DecoderEngine] | None = None) -> Application:
    """Bind every deployment of the graph. `engine_class` lets tests inject a decoder engine."""
    # Stopping replicas drain for as long as a request may take.
    drain_s = config.limits.request_timeout_s
    preprocessor = Preprocessor.options(name="Preprocessor", **config.preprocessor.deployment_options(drain_s)).bind(config)
    encoder = VisionEncoder.options(name="VisionEncoder", **config.encoder.deployment_options(drain_s)).bind(config)
    decoder = Decoder.options(name="Decoder", **config.decoder.deployment_options(drain_s)).bind(config, engine_class)
    return OCRIngress.options(name="OCRIngress", **config.ingress.deployment_options(drain_s)).bind(
        config, preprocessor, encoder, decoder
    )
