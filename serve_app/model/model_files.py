"""Where the checkpoint's files are: a local directory, a pinned hub snapshot, or the built-in tiny model."""

from __future__ import annotations

from pathlib import Path

from serve_app.config import TINY_RANDOM_SOURCE, ModelConfig


def resolve_model_path(model: ModelConfig) -> str:
    """Return a local directory holding the checkpoint; every stage loads from it.

    Idempotent and cheap after the first call (hub snapshots and the tiny model are cached),
    so each replica resolves it itself instead of trusting a path from another machine.
    """
    if model.family == "pp_ocr":
        from serve_app.model.lite_ocr import MODEL_DIR  # the ONNX files ship inside the rapidocr wheel

        return str(MODEL_DIR)
    if model.source == TINY_RANDOM_SOURCE:
        from serve_app.model.tiny_checkpoint import ensure_tiny_checkpoint

        return str(ensure_tiny_checkpoint())
    local = Path(model.source).expanduser()
    if local.is_dir():
        return str(local.resolve())
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id=model.source, revision=model.revision)
