"""vLLM model class for HunYuanVL that decodes from precomputed image embeddings.

Stock vLLM 0.32 serves HunYuanVLForConditionalGeneration through its Transformers backend
(TransformersMultiModalForCausalLM), which only takes pixels: a dict of embeddings is parsed as a
list of images, nothing sizes the placeholder, and `image_grid_thw` never reaches the XD-RoPE
position computation. This subclass adds that input, following the Qwen2-VL pattern:

    {"prompt": text, "multi_modal_data": {"image": {
        "image_embeds": (n_tok, text_hidden) tensor,   # the vision tower's pooler_output
        "image_grid_thw": (3,) or (n_images, 3) tensor}}}  # t, h, w in patches

with n_tok = t * (h / merge) * (w / merge + 1) + 2 per image (a newline column per row, plus the
image begin/end rows the patch merger adds). With a vision tower (image limit 1: encoder.placement
in_decoder) it also takes the Preprocessor's 8-bit patches, which skip vLLM's HF processor (the image
is already resized and laid out) and go through the same tower forward as the VisionEncoder stage's:

        "pixel_values": (t*h*w, 3*16*16) uint8 tensor,
        "pixel_normalization": (2, 3) float32 tensor,   # scale, offset per channel (PixelNormalization)
        "image_grid_thw": (3,) tensor

Register it with
`model_class_overrides={"HunYuanVLForConditionalGeneration": MODEL_CLASS_OVERRIDE}` and
`enable_mm_embeds=True`.

With `limit_mm_per_prompt={"image": 0}` (embeddings only) the vision tower is never built or
loaded: vLLM's Transformers backend swaps it for a StageMissingLayer on the meta device and
skips its weights, and this class refuses pixel input with a clear error instead of crashing.
With a non-zero image limit the tower is kept and pixels work as in stock vLLM.

The decoder runs HunyuanOCR's XD-RoPE as a static rope with the identical frequencies
(`serve_app.model.static_rope`): transformers maps xdrope to rope_type "dynamic", for which vLLM disables
torch.compile (`can_enable_torch_compile`) and whose per-step update syncs the device on the host. Exact while
max_model_len <= max_position_embeddings, which the constructor checks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from vllm.model_executor.models.transformers import TransformersMultiModalForCausalLM
from vllm.model_executor.models.transformers.multimodal import (
    MultiModalDummyInputsBuilder,
    MultiModalProcessingInfo,
    MultiModalProcessor,
)
from vllm.model_executor.models.utils import StageMissingLayer
from vllm.multimodal import MULTIMODAL_REGISTRY, MultiModalKwargsItems
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import DictEmbeddingItems, MultiModalDataItems, MultiModalDataParser
from vllm.multimodal.processing import PromptReplacement, PromptUpdate

from serve_app.model.hunyuan_vl import vision_tower_features
from serve_app.model.static_rope import make_rope_static
from serve_app.stage_io import PixelNormalization

MODEL_CLASS_OVERRIDE = "serve_app.engines.vllm_hunyuan_embeds:HunYuanVLEmbedsForConditionalGeneration"


def image_token_counts(image_grid_thw: torch.Tensor, merge_size: int) -> torch.Tensor:
    """Rows of `image_embeds` per image: one row per merged patch, a newline column, begin and end."""
    grid = image_grid_thw.reshape(-1, 3).long()
    t, h, w = grid[:, 0], grid[:, 1] // merge_size, grid[:, 2] // merge_size
    return t * h * (w + 1) + 2


def _embeds_field_config(merge_size: int):
    def factory(hf_inputs: Mapping[str, torch.Tensor]) -> dict[str, MultiModalFieldConfig]:
        grid = hf_inputs.get("image_grid_thw", torch.empty((0, 3), dtype=torch.long))
        return {
            # Concatenated rows of all images in the prompt, split per image by its token count.
            "image_embeds": MultiModalFieldConfig.flat_from_sizes("image", image_token_counts(grid, merge_size)),
            # One row per image; kept on CPU because only the position computation reads it.
            "image_grid_thw": MultiModalFieldConfig.batched("image", keep_on_cpu=True),
        }

    return factory


def _patches_field_config(hf_inputs: Mapping[str, torch.Tensor]) -> dict[str, MultiModalFieldConfig]:
    grid = hf_inputs.get("image_grid_thw", torch.empty((0, 3), dtype=torch.long))
    return {
        # Concatenated patches of all images in the prompt, split per image by its patch count.
        "pixel_values": MultiModalFieldConfig.flat_from_sizes("image", grid.prod(-1)),
        "pixel_normalization": MultiModalFieldConfig.batched("image", keep_on_cpu=True),  # read on the host only
        "image_grid_thw": MultiModalFieldConfig.batched("image", keep_on_cpu=True),
    }


PATCH_FIELDS = frozenset({"pixel_values", "pixel_normalization", "image_grid_thw"})


class HunYuanVLEmbedsDataParser(MultiModalDataParser):
    embedding_fields = {"image": {"image_embeds": "values", "image_grid_thw": "metadata"}}

    def __init__(self, merge_size: int, *args, **kwargs):
        self._merge_size = merge_size
        super().__init__(*args, **kwargs)

    def _parse_image_data(self, data):
        if not isinstance(data, Mapping):
            return super()._parse_image_data(data)
        data = dict(data)
        if "image_grid_thw" not in data:
            raise ValueError("image embeddings need 'image_grid_thw' (t, h, w in patches) next to 'image_embeds'")
        # Accept a single image's grid as (3,); vLLM's batched field wants one row per image.
        grid = torch.as_tensor(data["image_grid_thw"]).reshape(-1, 3).long()
        if (grid <= 0).any() or (grid[:, 1:] % self._merge_size != 0).any():
            raise ValueError(
                f"invalid image_grid_thw {grid.tolist()}: must be positive, h and w divisible by {self._merge_size}"
            )
        data["image_grid_thw"] = grid
        if "pixel_values" in data:
            return self._patches(data, grid)
        if (embeds := data.get("image_embeds")) is not None:
            # Non-contiguous inputs crash vLLM's CPU matmul ("Expected a.stride(-1) == 1").
            embeds = torch.as_tensor(embeds).contiguous()
            expected_rows = int(image_token_counts(grid, self._merge_size).sum())
            if embeds.ndim != 2 or embeds.shape[0] != expected_rows:
                raise ValueError(
                    f"image_embeds has shape {tuple(embeds.shape)}, expected ({expected_rows}, hidden) "
                    f"for image_grid_thw {grid.tolist()}"
                )
            if self.expected_hidden_size is not None and embeds.shape[1] != self.expected_hidden_size:
                raise ValueError(
                    f"image_embeds hidden size {embeds.shape[1]} != decoder hidden size {self.expected_hidden_size}"
                )
            data["image_embeds"] = embeds
        required, optional = self.embedding_field_sets("image")
        return DictEmbeddingItems(
            data,
            modality="image",
            required_fields=required,
            optional_fields=optional,
            fields_factory=_embeds_field_config(self._merge_size),
        )


    def _patches(self, data: dict, grid: torch.Tensor) -> DictEmbeddingItems:
        """8-bit patches in the vision tower's layout (serve_app.model.hunyuan_vl.image_to_patch_pixels)."""
        if set(data) != PATCH_FIELDS:
            raise ValueError(f"image patches need exactly the fields {sorted(PATCH_FIELDS)}, got {sorted(data)}")
        patches = torch.as_tensor(data["pixel_values"])
        if patches.dtype != torch.uint8 or patches.ndim != 2 or patches.shape[0] != int(grid.prod(-1).sum()):
            raise ValueError(
                f"pixel_values must be uint8 patches, one row per patch of image_grid_thw {grid.tolist()}; got "
                f"{patches.dtype} of shape {tuple(patches.shape)}"
            )
        normalization = torch.as_tensor(data["pixel_normalization"], dtype=torch.float32).reshape(-1, 2, 3)
        if normalization.shape[0] != grid.shape[0]:
            raise ValueError("pixel_normalization needs one (scale, offset) pair per image")
        data.update(pixel_values=patches.contiguous(), pixel_normalization=normalization)
        return DictEmbeddingItems(
            data, modality="image", required_fields=PATCH_FIELDS, fields_factory=_patches_field_config
        )


class HunYuanVLEmbedsProcessingInfo(MultiModalProcessingInfo):
    @property
    def merge_size(self) -> int:
        return self.get_hf_config().vision_config.spatial_merge_size

    def get_data_parser(self) -> MultiModalDataParser:
        return HunYuanVLEmbedsDataParser(
            self.merge_size,
            expected_hidden_size=self._get_expected_hidden_size(),
            allow_missing_mm_embeddings=self.allow_missing_mm_embeddings,
        )


class HunYuanVLEmbedsProcessor(MultiModalProcessor):
    """Pixels take the Transformers backend's path; embeddings skip the HF processor entirely."""

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs) -> Mapping[str, MultiModalFieldConfig]:
        if "pixel_normalization" in hf_inputs:
            return _patches_field_config(hf_inputs)
        if "image_embeds" in hf_inputs or ("image_grid_thw" in hf_inputs and "pixel_values" not in hf_inputs):
            return _embeds_field_config(self.info.merge_size)(hf_inputs)
        return super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs)

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        if not isinstance(mm_items.get("image"), DictEmbeddingItems):
            return super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        image_token_id = self.info.get_hf_config().image_token_id
        merge_size = self.info.merge_size

        def replacement(item_idx: int) -> list[int]:
            grid = out_mm_kwargs["image"][item_idx]["image_grid_thw"].data
            return [image_token_id] * int(image_token_counts(grid, merge_size).sum())

        # The chat template puts one image token between image start/end; it becomes n_tok of them,
        # which is also the span get_rope_index expects (grid tokens + 2).
        return [PromptReplacement(modality="image", target=[image_token_id], replacement=replacement)]


@MULTIMODAL_REGISTRY.register_processor(
    HunYuanVLEmbedsProcessor,
    info=HunYuanVLEmbedsProcessingInfo,
    dummy_inputs=MultiModalDummyInputsBuilder,
)
class HunYuanVLEmbedsForConditionalGeneration(TransformersMultiModalForCausalLM):
    def __init__(self, *, vllm_config, prefix: str = ""):
        # Before the HF modules are built: the rotary embedding reads its rope type at init, and vLLM's
        # compile decision (can_enable_torch_compile) reads this config when the decoder is constructed.
        # Raises if max_model_len > max_position_embeddings (beyond it the static rope would not be exact).
        model_config = vllm_config.model_config
        make_rope_static(model_config.hf_config, model_config.max_model_len)
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        if not self.vision_tower_skipped:
            # Pixel path only: vLLM swaps the merger's nn.Linear for a oneDNN GEMM on CPU that needs
            # a contiguous input, and the merger feeds it a permuted view ("Expected a.stride(-1) == 1").
            self.model.vision_tower.patch_merger.mlp.register_forward_pre_hook(
                lambda _module, args: (args[0].contiguous(), *args[1:])
            )

    @property
    def vision_tower_skipped(self) -> bool:
        # Set by vLLM's tower marking when the image limit is 0: nothing was allocated or loaded.
        return isinstance(self.model.vision_tower, StageMissingLayer)

    def _process_image_input(self, **kwargs) -> list[torch.Tensor] | None:
        image_embeds = kwargs.pop("image_embeds", None)
        if kwargs.get("pixel_normalization") is not None:
            return [embeds.to(self.model_config.dtype).contiguous() for embeds in self._encode_patches(**kwargs)]
        if image_embeds is None:
            if self.vision_tower_skipped and kwargs.get("pixel_values") is not None:
                raise ValueError(
                    "this decoder was started without a vision tower (limit_mm_per_prompt image=0); "
                    "send image_embeds, not pixels"
                )
            return super()._process_image_input(**kwargs)
        sizes = image_token_counts(kwargs["image_grid_thw"], self.config.vision_config.spatial_merge_size).tolist()
        if isinstance(image_embeds, torch.Tensor):
            # Items of a batch arrive concatenated along the rows (flat field): split them back.
            image_embeds = torch.split(image_embeds.reshape(-1, image_embeds.shape[-1]), sizes)
        dtype = self.model_config.dtype
        # One tensor per image, as vLLM's encoder cache expects; contiguous for the CPU kernels.
        return [embeds.to(dtype).contiguous() for embeds in image_embeds]

    def _encode_patches(self, pixel_values, pixel_normalization, image_grid_thw, **_) -> list[torch.Tensor]:
        """The Preprocessor's 8-bit patches through the VisionEncoder stage's forward pass, on this engine's tower."""
        if self.vision_tower_skipped:
            raise ValueError("this decoder was started without a vision tower (encoder.placement split); send embeddings")
        grids = torch.stack(list(image_grid_thw)) if isinstance(image_grid_thw, (list, tuple)) else image_grid_thw
        grids = grids.reshape(-1, 3).long().cpu()
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = torch.cat(list(pixel_values))
        scale_offset = torch.stack(list(pixel_normalization)) if isinstance(pixel_normalization, (list, tuple)) else pixel_normalization
        scale_offset = scale_offset.reshape(-1, 2, 3).float().cpu()
        # Each image normalised with its own (scale, offset), then one tower call for all of them: the same float32
        # operations the tower's own normalisation does, so the same values.
        pixels = torch.cat([
            PixelNormalization(tuple(pair[0].tolist()), tuple(pair[1].tolist())).apply_torch(patches)
            for patches, pair in zip(torch.split(pixel_values, grids.prod(-1).tolist()), scale_offset)
        ])
        features = vision_tower_features(self.model.vision_tower, pixels, grids)
        return list(torch.split(features, image_token_counts(grids, self.config.vision_config.spatial_merge_size).tolist()))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        if not self.vision_tower_skipped:
            return super().load_weights(weights)
        # Drop the vision tower and its patch merger (the adapter) before loading, whatever the
        # checkpoint calls them: names are compared after the backend's checkpoint renaming.
        mapper = self.hf_to_vllm_mapper

        def language_only(items):
            for name, tensor in items:
                mapped = mapper.map_name(name)
                if mapped is None or not mapped.startswith("model.vision_tower."):
                    yield name, tensor

        return super().load_weights(language_only(weights))
