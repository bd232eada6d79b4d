"""HunyuanOCR (transformers `hunyuan_vl`) helpers shared by the encoder and the transformers decoder engine.

- `load_vision_tower`: only the vision tower (ViT + patch merger), built from the checkpoint's config, with
  only its tensors read from the safetensors files (the language model is never loaded). Works for
  checkpoints saved by transformers (`model.vision_tower.*`) and for Tencent's original layout (`vit.*`,
  `perceive.*`, renamed the way transformers' conversion mapping does).
- `encode_image_tensors`: several images in one vision tower call; per-image embeddings in the decoder's
  hidden size, exactly what HunYuanVLForConditionalGeneration scatters into the image placeholder positions
  (`encode_images`: the same as float32 numpy arrays).
- `load_text_model`: HunYuanVLForConditionalGeneration without its vision tower (vision tensors are skipped
  at load time, never materialised).
- Prompt helpers: expand the single image placeholder the way HunYuanVLProcessor does.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from serve_app.stage_io import PixelNormalization

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

# Key prefixes of vision tower tensors, most specific first. transformers saves `model.vision_tower.*`;
# Tencent's original checkpoints use `vit.*` (and `model.vit.*` appears in some exports).
_VISION_PREFIXES = ("model.vision_tower.", "vision_tower.", "model.vit.", "vit.")

# Tencent layout -> transformers module names (mirrors transformers' conversion_mapping for hunyuan_vl),
# applied to keys relative to the vision tower.
_LEGACY_RENAMES = (
    (re.compile(r"\.mlp\.dense_h_to_4h\."), ".mlp.fc1."),
    (re.compile(r"\.mlp\.dense_4h_to_h\."), ".mlp.fc2."),
    (re.compile(r"^layers\.(\d+)\.input_layernorm\."), r"layers.\1.layer_norm1."),
    (re.compile(r"^layers\.(\d+)\.post_attention_layernorm\."), r"layers.\1.layer_norm2."),
    (re.compile(r"^perceive\.proj\.0\."), "perceive.proj_conv."),
    (re.compile(r"^perceive\.proj\.2\."), "perceive.proj_out."),
    (re.compile(r"^perceive\."), "patch_merger."),
)


def torch_dtype(name: str | torch.dtype) -> torch.dtype:
    """`"bfloat16"` -> `torch.bfloat16` (a torch dtype passes through)."""
    if isinstance(name, torch.dtype):
        return name
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unsupported dtype {name!r}; expected one of {sorted(_DTYPES)}") from None


def resolve_device(preference: str = "auto") -> str:
    """`"cpu"` -> `"cpu"`; `"cuda"` -> `"cuda"`, or RuntimeError saying why no GPU can be used (a config that
    asks for the GPU must not run on the CPU unnoticed); `"auto"` -> `"cuda"` when a GPU is usable, else
    `"cpu"` (logged at INFO, with the reason)."""
    if preference not in ("auto", "cuda", "cpu"):
        raise ValueError(f"unsupported device {preference!r}; expected 'auto', 'cuda' or 'cpu'")
    if preference == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    reason = _no_cuda_reason()
    if preference == "cuda":
        raise RuntimeError(f"device 'cuda' was configured, but CUDA cannot be used: {reason}")
    logging.getLogger(__name__).info("device 'auto': using the CPU (%s)", reason)
    return "cpu"


def _no_cuda_reason() -> str:
    """Why torch.cuda.is_available() is False, in words an operator can act on."""
    if torch.version.cuda is None:
        return (
            f"this torch ({torch.__version__}) is a CPU-only build; install the CUDA build (`make install` on a "
            "machine where nvidia-smi works installs vLLM's CUDA torch)"
        )
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return (
            f"CUDA_VISIBLE_DEVICES is {visible!r}, which hides every GPU (under Ray Serve: give the stage "
            "num_gpus > 0)"
        )
    return (
        f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no usable CUDA device (no GPU, or the NVIDIA "
        "driver is missing or older than this CUDA version; check `nvidia-smi`)"
    )


def load_model_config(model_path: str):
    """The checkpoint's HunYuanVLConfig (fails clearly for other architectures)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path)
    if getattr(config, "model_type", None) != "hunyuan_vl":
        raise ValueError(f"{model_path}: model_type is {config.model_type!r}, expected 'hunyuan_vl'")
    return config


def image_token_count(image_grid_thw, spatial_merge_size: int = 2) -> int:
    """Placeholder tokens one image takes: t * (h/m) * (w/m + 1) + 2 (a newline column plus begin/end)."""
    grid = np.asarray(image_grid_thw).reshape(-1)
    if grid.size != 3:
        raise ValueError(f"image_grid_thw must have 3 entries (t, h, w), got shape {np.asarray(image_grid_thw).shape}")
    t, h, w = (int(v) for v in grid)
    if min(t, h, w) <= 0 or h % spatial_merge_size or w % spatial_merge_size:
        raise ValueError(f"invalid image_grid_thw {(t, h, w)} for spatial merge size {spatial_merge_size}")
    return t * (h // spatial_merge_size) * (w // spatial_merge_size + 1) + 2


# --------------------------------------------------------------------------------------------- weights


def _safetensors_files(model_path: Path) -> dict[str, Path]:
    """Map every tensor key to the safetensors file holding it (index file, else every *.safetensors)."""
    from safetensors import safe_open

    index = model_path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {key: model_path / filename for key, filename in weight_map.items()}
    files = sorted(model_path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_path}: no safetensors weights found")
    key_to_file: dict[str, Path] = {}
    for file in files:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for key in handle.keys():
                key_to_file[key] = file
    return key_to_file


def vision_key(checkpoint_key: str) -> str | None:
    """The vision tower's parameter name for a checkpoint key, or None if the key is not a vision tensor."""
    for prefix in _VISION_PREFIXES:
        if checkpoint_key.startswith(prefix):
            key = checkpoint_key[len(prefix) :]
            break
    else:
        return None
    for pattern, replacement in _LEGACY_RENAMES:
        key = pattern.sub(replacement, key)
    return key


def _read_vision_state_dict(model_path: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    by_file: dict[Path, list[tuple[str, str]]] = {}
    for checkpoint_key, file in _safetensors_files(model_path).items():
        name = vision_key(checkpoint_key)
        if name is not None:
            by_file.setdefault(file, []).append((checkpoint_key, name))
    state: dict[str, torch.Tensor] = {}
    for file, keys in sorted(by_file.items()):
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            for checkpoint_key, name in keys:
                if name in state:
                    raise ValueError(f"{model_path}: two checkpoint tensors map to vision parameter {name!r}")
                state[name] = handle.get_tensor(checkpoint_key).to(dtype)
    return state


def load_vision_tower(model_path: str, dtype: torch.dtype, device: str) -> torch.nn.Module:
    """Build only HunyuanOCR's vision tower (ViT + patch merger) and load only its weights.

    The module's output (`pooler_output`) is the image embeddings in the text hidden size, begin/end and
    row-newline tokens included, as the full model consumes them.
    """
    from transformers.models.hunyuan_vl.modeling_hunyuan_vl import HunYuanVLVisionTransformer

    dtype = torch_dtype(dtype)
    path = Path(model_path)
    vision_config = load_model_config(model_path).vision_config
    with torch.device("meta"):
        tower = HunYuanVLVisionTransformer._from_config(vision_config, dtype=dtype)
    state = _read_vision_state_dict(path, dtype)

    expected = set(tower.state_dict().keys())
    missing = sorted(expected - state.keys())
    unexpected = sorted(state.keys() - expected)
    if missing or unexpected:
        raise ValueError(
            f"{model_path}: vision tower weights do not match the config "
            f"(missing: {missing[:8]}{'...' if len(missing) > 8 else ''}; "
            f"unexpected: {unexpected[:8]}{'...' if len(unexpected) > 8 else ''})"
        )
    tower.load_state_dict(state, strict=True, assign=True)
    del state
    for name, tensor in list(tower.named_buffers()):
        if tensor.is_meta:
            raise ValueError(f"vision tower buffer {name!r} was not initialised")
    return tower.to(device=device).eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------- model input


def image_to_patch_pixels(image, image_processor) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image already at the model's input size -> (8-bit patches, image_grid_thw): HunYuanVL's
    image processor's patch layout before normalisation (PixelNormalization gives its float32 values).

    Moving the uint8 pixels into the patch layout first moves a quarter of the bytes, and the
    normalisation is then one multiply-add per element: with it, 466 -> 37 ms for a 2336x1760 model input
    against the processor's five passes, 20 -> 1.2 ms for 576x416 (2 cores). (Memory-bound: splitting it
    over 2 threads saved 2 of 21 ms, so it stays in one.)"""
    patch = int(image_processor.patch_size)
    merge = int(image_processor.merge_size)
    temporal = int(getattr(image_processor, "temporal_patch_size", 1) or 1)
    pixels = np.asarray(image, dtype=np.uint8)  # (height, width, 3)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected an RGB image, got an array of shape {pixels.shape}")
    height, width, channels = pixels.shape
    if height % (patch * merge) or width % (patch * merge):
        raise ValueError(f"image size {width}x{height} is not a multiple of {patch * merge}")
    grid_h, grid_w = height // patch, width // patch
    # (H, W, C) -> (grid_h, patch, grid_w, patch, C) -> (grid_h, grid_w, C, patch, patch): patches in raster
    # order, each channel-major, as the processor lays them out (its merge_size axes keep raster order).
    blocks = pixels.reshape(grid_h, patch, grid_w, patch, channels).transpose(0, 2, 4, 1, 3)
    patches = np.empty((grid_h, grid_w, channels, temporal, patch, patch), dtype=np.uint8)
    patches[...] = blocks[:, :, :, None]  # the processor repeats a still image over its temporal patch
    grid = np.array([1, grid_h, grid_w], dtype=np.int64)
    return patches.reshape(grid_h * grid_w, channels * temporal * patch * patch), grid


# --------------------------------------------------------------------------------------------- encoding


def encode_image_tensors(
    vision_tower: torch.nn.Module,
    pixel_values: Sequence[np.ndarray],
    image_grid_thw: Sequence[np.ndarray],
    normalization: PixelNormalization | None = None,
) -> list[torch.Tensor]:
    """Run all images through the vision tower in one call; return per-image embeddings on the CPU, in the
    tower's dtype (row views of one batch tensor: one device-to-host copy per batch).

    `pixel_values[i]` is (t*h*w, 3*16*16) and `image_grid_thw[i]` is (t, h, w). Without `normalization` the
    pixels are the image processor's float32 values; with it, 8-bit patches (image_to_patch_pixels),
    normalised here on the tower's device.
    Each result is (image_token_count(grid_i), text_hidden_size). Attention in the tower is block-diagonal
    per image, so batching does not mix images.
    """
    if len(pixel_values) != len(image_grid_thw):
        raise ValueError(f"{len(pixel_values)} pixel arrays but {len(image_grid_thw)} grids")
    if not pixel_values:
        return []
    merge = int(vision_tower.config.spatial_merge_size)
    grids = np.stack([np.asarray(g, dtype=np.int64).reshape(3) for g in image_grid_thw])
    counts = []
    for index, (pixels, grid) in enumerate(zip(pixel_values, grids)):
        patches = int(np.prod(grid))
        if pixels.ndim != 2 or pixels.shape[0] != patches:
            raise ValueError(f"image {index}: pixel_values shape {pixels.shape} does not match grid {grid.tolist()}")
        if grid[0] != 1:
            raise ValueError(f"image {index}: temporal grid {grid[0]} is not supported (images only)")
        counts.append(image_token_count(grid, merge))

    # np.concatenate makes one new contiguous, writable array (inputs may be read-only Ray buffers).
    if normalization is None:
        flat = np.concatenate([np.asarray(p, dtype=np.float32) for p in pixel_values], axis=0)
    else:
        if any(np.asarray(p).dtype != np.uint8 for p in pixel_values):
            raise ValueError("pixels with a normalization must be 8-bit patches (uint8)")
        flat = np.concatenate(pixel_values, axis=0)
    with torch.inference_mode():
        features = vision_tower_features(vision_tower, torch.from_numpy(flat), torch.from_numpy(grids), normalization)
        return list(torch.split(features.cpu().contiguous(), counts))


def vision_tower_features(
    vision_tower: torch.nn.Module,
    pixels: torch.Tensor,
    image_grid_thw: torch.Tensor,
    normalization: PixelNormalization | None = None,
) -> torch.Tensor:
    """The tower's forward pass that both placements run: the VisionEncoder stage (through encode_image_tensors)
    and vLLM's engine (encoder.placement in_decoder, serve_app.engines.vllm_hunyuan_embeds).

    `pixels`: all images' patches concatenated, (sum of t*h*w, 3*16*16), 8-bit when `normalization` is given
    (normalised here, on the tower's device), else float pixel values. `image_grid_thw`: (n_images, 3).
    Returns the images' embeddings concatenated, (sum of image_token_count, text_hidden), on the tower's device."""
    parameter = next(vision_tower.parameters())
    pixels = pixels.to(device=parameter.device)
    if normalization is not None:
        pixels = normalization.apply_torch(pixels)
    pixels = pixels.to(dtype=parameter.dtype).contiguous()
    grids = image_grid_thw.reshape(-1, 3).to(device=parameter.device, dtype=torch.int64)
    features = vision_tower(pixels, grid_thw=grids).pooler_output.squeeze(0)
    merge = int(vision_tower.config.spatial_merge_size)
    expected = sum(image_token_count(grid, merge) for grid in image_grid_thw.reshape(-1, 3).tolist())
    if features.shape[0] != expected:
        raise RuntimeError(f"vision tower returned {features.shape[0]} rows, expected {expected}")
    return features


def encode_images(
    vision_tower: torch.nn.Module,
    pixel_values: Sequence[np.ndarray],
    image_grid_thw: Sequence[np.ndarray],
    normalization: PixelNormalization | None = None,
) -> list[np.ndarray]:
    """encode_image_tensors, as float32 numpy arrays of their own (what tests and benches compare)."""
    tensors = encode_image_tensors(vision_tower, pixel_values, image_grid_thw, normalization)
    return [tensor.to(torch.float32, copy=True).numpy() for tensor in tensors]


# --------------------------------------------------------------------------------------------- text model


@functools.cache
def _text_only_model_class():
    from transformers import HunYuanVLForConditionalGeneration
    from transformers.conversion_mapping import (
        get_checkpoint_conversion_mapping,
        register_checkpoint_conversion_mapping,
    )

    class HunYuanVLTextOnlyForConditionalGeneration(HunYuanVLForConditionalGeneration):
        """HunYuanVLForConditionalGeneration without its vision tower.

        from_pretrained instantiates on the meta device, so the tower built by the parent constructor costs
        nothing; it is removed before weights load, and its checkpoint tensors are skipped as unexpected.
        Images enter through `mm_encoder_outputs` (precomputed embeddings) instead of `pixel_values`.
        """

        _keys_to_ignore_on_load_unexpected = [r"vision_tower\.", r"^vit\.", r"^model\.vit\."]

        def __init__(self, config):
            super().__init__(config)
            del self.model.vision_tower

        def get_image_features(self, *args, **kwargs):
            raise RuntimeError("this model has no vision tower; pass precomputed image embeddings")

    # transformers applies its checkpoint key conversions (Tencent layout -> module names) only to its own
    # classes; register the same mapping for this subclass so its checkpoints load identically.
    register_checkpoint_conversion_mapping(
        HunYuanVLTextOnlyForConditionalGeneration.__name__,
        get_checkpoint_conversion_mapping("hunyuan_vl") or [],
        overwrite=True,
    )
    return HunYuanVLTextOnlyForConditionalGeneration


def load_text_model(model_path: str, dtype: torch.dtype, device: str) -> torch.nn.Module:
    """HunYuanVLForConditionalGeneration minus the vision tower, in eval mode on `device`."""
    cls = _text_only_model_class()
    load_model_config(model_path)
    if device != "cpu" and importlib.util.find_spec("accelerate") is not None:
        # Straight onto the accelerator, without a full copy in host memory.
        model = cls.from_pretrained(model_path, dtype=torch_dtype(dtype), device_map=device)
    else:
        model = cls.from_pretrained(model_path, dtype=torch_dtype(dtype)).to(device)
    return model.eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------- prompts


def expand_image_placeholder(prompt: str, n_tokens: int, image_token: str, start_token: str, end_token: str) -> str:
    """Replace the prompt's single `start + image + end` span's image token by `n_tokens` image tokens.

    Same text HunYuanVLProcessor produces before tokenizing (its `replace_image_token`).
    """
    positions = [m.start() for m in re.finditer(re.escape(image_token), prompt)]
    if len(positions) != 1:
        raise ValueError(f"prompt must contain exactly one image placeholder, found {len(positions)}")
    position = positions[0]
    wrapped = (
        prompt[max(0, position - len(start_token)) : position] == start_token
        and prompt[position + len(image_token) : position + len(image_token) + len(end_token)] == end_token
    )
    if not wrapped:
        raise ValueError(f"the image placeholder must be written as {start_token}{image_token}{end_token}")
    if n_tokens <= 0:
        raise ValueError(f"image token count must be positive, got {n_tokens}")
    return prompt[:position] + image_token * n_tokens + prompt[position + len(image_token) :]
