"""Decoder engines behind one contract (`DecoderEngine`); `decoder.engine` in config picks one."""

from __future__ import annotations

import importlib

from serve_app.engines.base import DecoderEngine

# Imported lazily: the transformers engine must not pull in vLLM, and the reverse.
ENGINE_CLASSES = {
    "vllm": "serve_app.engines.vllm_engine:VLLMEngine",
    "transformers": "serve_app.engines.transformers_engine:TransformersEngine",
    "pp_ocr": "serve_app.engines.lite_engine:TextRecognitionEngine",
}


def load_engine_class(name: str) -> type[DecoderEngine]:
    module_name, class_name = ENGINE_CLASSES[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)


__all__ = ["DecoderEngine", "ENGINE_CLASSES", "load_engine_class"]
