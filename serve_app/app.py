"""The builder: validates the config and wires the whole graph, binding every deployment here.

`serve run serve_config.yaml` calls `build_app` with the YAML's `args`.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ValidationError
from ray.serve import Application

from serve_app.config import OCRAppConfig
from serve_app.stages.decoder import Decoder
from serve_app.engines import DecoderEngine
from serve_app.gpu_plan import check_gpu_plan
from serve_app.model.model_files import pin_revision
from serve_app.profiles import PROMPT_RESERVE_TOKENS, max_image_tokens
from serve_app.stages.ingress import OCRIngress
from serve_app.stages.preprocessor import Preprocessor
from serve_app.stages.vision_encoder import VisionEncoder


logger = logging.getLogger("ray.serve")


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
        check_context(config)
        if config.model.device == "cuda":
            # The plan for one 24 GiB card (serve_app/gpu_plan.py): refuse what cannot fit before anything starts.
            try:
                check_gpu_plan(config)
            except ValueError as error:
                raise ConfigError(f"Invalid serve_app config: {error}") from None
    return config


def check_context(config: OCRAppConfig) -> None:
    """The decoder's context must hold the largest page's image tokens and a prompt; if it cannot also hold
    max_tokens_cap more, requests that ask for that much get max_tokens lowered (with a warning) instead."""
    max_model_len = config.decoder.engine_args.get("max_model_len")
    if max_model_len is None or config.model.family != "hunyuan_vl":
        return  # vLLM's default: the model's own max_position_embeddings
    page_tokens = max_image_tokens(config.model.max_pixels) + PROMPT_RESERVE_TOKENS
    if max_model_len < page_tokens:
        raise ConfigError(
            f"Invalid serve_app config: decoder.engine_args.max_model_len {max_model_len} cannot hold a page at "
            f"model.max_pixels {config.model.max_pixels} (up to {page_tokens} tokens with the prompt); raise it or "
            "lower max_pixels."
        )
    if max_model_len < page_tokens + config.limits.max_tokens_cap:
        logger.warning(
            "decoder.engine_args.max_model_len %d < %d (largest page and prompt) + limits.max_tokens_cap %d: requests "
            "asking for more than fits get max_tokens lowered, with a warning",
            max_model_len, page_tokens, config.limits.max_tokens_cap,
        )


def build_app(args: dict[str, Any]) -> Application:
    """Entry point of `serve run` (Ray Serve calls it with the config file's `args`). A hub branch is resolved
    to its commit here, once: every replica then loads that exact commit."""
    config = load_config(args)
    return build_graph(config.model_copy(update={"model": pin_revision(config.model)}))


def build_graph(config: OCRAppConfig, engine_class: type[DecoderEngine] | None = None) -> Application:
    """Bind every deployment of the graph. `engine_class` lets tests inject a decoder engine."""
    # Stopping replicas drain for as long as a request may take.
    drain_s = config.limits.request_timeout_s
    preprocessor = Preprocessor.options(name="Preprocessor", **config.preprocessor.deployment_options(drain_s)).bind(config)
    encoder = None  # in_decoder: vLLM runs the vision tower in the Decoder's engine, no deployment of its own
    if config.encoder.placement == "split":
        encoder = VisionEncoder.options(name="VisionEncoder", **config.encoder.deployment_options(drain_s)).bind(config)
    decoder = Decoder.options(name="Decoder", **config.decoder.deployment_options(drain_s)).bind(config, engine_class)
    return OCRIngress.options(name="OCRIngress", **config.ingress.deployment_options(drain_s)).bind(
        config, preprocessor, encoder, decoder
    )
