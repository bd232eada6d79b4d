"""Where the checkpoint's files are: a local directory, a pinned hub snapshot, or a built-in model.

A hub branch (1.5's `main`) is resolved to a commit once, when the app is built (`pin_revision`); every
replica then downloads and loads that commit, so no two stages can serve different weights.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from serve_app.config import TINY_RANDOM_SOURCE, ModelConfig

logger = logging.getLogger("ray.serve")
COMMIT = re.compile(r"[0-9a-f]{40}")


def is_hub_source(model: ModelConfig) -> bool:
    """A HunyuanOCR checkpoint that comes from the hub (not a local directory or a built-in model)."""
    return (
        model.family == "hunyuan_vl"
        and not model.source.startswith("builtin:")
        and not Path(model.source).expanduser().is_dir()
    )


def cached_commit(repo_id: str, revision: str) -> str | None:
    """The commit the local hub cache last resolved `revision` to (what an offline snapshot_download uses)."""
    from huggingface_hub import constants

    ref = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}" / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else ""
    return commit if COMMIT.fullmatch(commit) else None


def pin_revision(model: ModelConfig, resolve=None) -> ModelConfig:
    """The config with `revision` resolved to a commit (hub sources only). `resolve(repo_id, revision)` asks the
    hub (default); without network the local cache's record of the branch is used, else the start fails."""
    revision = model.revision or "main"
    if not is_hub_source(model) or COMMIT.fullmatch(revision):
        return model
    if resolve is None:
        from huggingface_hub import HfApi

        def resolve(repo_id: str, rev: str) -> str:
            return HfApi().model_info(repo_id, revision=rev).sha

    try:
        commit = resolve(model.source, revision)
    except Exception as error:
        commit = cached_commit(model.source, revision)
        if commit is None:
            raise RuntimeError(
                f"Cannot resolve {model.source}@{revision} to a commit ({type(error).__name__}: {error}) and the local "
                "hub cache has no record of it: check the network, or set model.revision to a commit."
            ) from error
        logger.warning("hub unreachable (%s); using the cached commit of %s@%s", type(error).__name__, model.source, revision)
    if not commit or not COMMIT.fullmatch(commit):
        raise RuntimeError(f"{model.source}@{revision} resolved to {commit!r}, not a commit hash")
    logger.info("Serving %s (HunyuanOCR %s) at commit %s (%s)", model.source, model.version, commit, revision)
    return model.model_copy(update={"revision": commit})


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

        return str(ensure_tiny_checkpoint(layout=model.version))  # the config layout of the served version
    local = Path(model.source).expanduser()
    if local.is_dir():
        return str((local / model.subfolder if model.subfolder else local).resolve())
    from huggingface_hub import snapshot_download

    from serve_app.profiles import profile_for

    # Only this version's files: 1.5's repo root also holds v1.0/ and the DFlash draft (dflash/).
    if model.subfolder:
        files = {"allow_patterns": [f"{model.subfolder.strip('/')}/*"]}
    else:
        files = {"ignore_patterns": list(profile_for(model.version).ignore_patterns) or None}
    snapshot = snapshot_download(repo_id=model.source, revision=model.revision, **files)
    return str(Path(snapshot) / model.subfolder) if model.subfolder else snapshot
