"""What the stages hand to each other. Arrays are numpy so Ray moves them without pickling torch."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class PixelNormalization:
    """Per channel, x * scale + offset == the image processor's (x * rescale_factor - mean) / std.

    The Preprocessor hands the VisionEncoder 8-bit patches and this; the encoder applies it on the tower's
    device. A quarter of the bytes of float32 pixel_values cross Ray's object store (a 2048x2048 model
    input: 12.6 instead of 50 MB), and on a GPU the float work is the device's. The arithmetic is float32
    in both places, so the values are the same as the processor's."""

    scale: tuple[float, ...]  # float32 values, one per channel
    offset: tuple[float, ...]

    @classmethod
    def of(cls, image_processor) -> PixelNormalization:
        rescale = float(image_processor.rescale_factor) if image_processor.do_rescale else 1.0
        if image_processor.do_normalize:
            mean = np.asarray(image_processor.image_mean, dtype=np.float64)
            std = np.asarray(image_processor.image_std, dtype=np.float64)
        else:
            mean, std = np.zeros(3), np.ones(3)
        scale, offset = (rescale / std).astype(np.float32), (-mean / std).astype(np.float32)
        return cls(tuple(float(value) for value in scale), tuple(float(value) for value in offset))

    def apply(self, patches: np.ndarray) -> np.ndarray:
        """(n_patches, channels * k) uint8 -> float32 pixel_values, in numpy: one multiply straight into the
        output (uint8 * float32 -> float32), then one add."""
        channels = len(self.scale)
        out = np.empty(patches.shape, dtype=np.float32)
        out_channels = out.reshape(len(patches), channels, -1)
        np.multiply(patches.reshape(len(patches), channels, -1), np.float32(self.scale)[:, None], out=out_channels)
        out_channels += np.float32(self.offset)[:, None]
        return out

    def apply_torch(self, patches: torch.Tensor) -> torch.Tensor:
        """apply() for a uint8 tensor, on its device: the same float32 operations, so the same values."""
        import torch  # here, not at the top: the ingress imports this module and never needs torch

        channels = len(self.scale)
        values = patches.reshape(patches.shape[0], channels, -1).to(torch.float32)
        scale = torch.tensor(self.scale, dtype=torch.float32, device=patches.device).view(1, channels, 1)
        offset = torch.tensor(self.offset, dtype=torch.float32, device=patches.device).view(1, channels, 1)
        return values.mul_(scale).add_(offset).reshape(patches.shape)


@dataclass
class PreparedImage:
    """Preprocessor output: model-ready pixels, the prompt, and what is needed to map boxes back.

    Out of the Preprocessor stage the pixels travel apart, in Ray's object store (`pixels_ref`): the ingress
    receives this small record (prompt, sizes) and passes it on, and the VisionEncoder alone fetches the pixels."""

    # uint8. HunyuanOCR: (n_patches, channels * patch * patch) in the vision tower's patch layout, to be
    # normalised with `normalization`. PP-OCR: the (height, width, 3) RGB image. None while in `pixels_ref`.
    pixels: np.ndarray | None
    image_grid_thw: np.ndarray  # (3,) int64: temporal, height, width in patches
    prompt: str  # chat template applied: system/user text with one image placeholder span
    original_size: tuple[int, int]  # (width, height) of the decoded image as the caller sent it
    oriented_size: tuple[int, int]  # (width, height) after EXIF orientation
    model_size: tuple[int, int]  # (width, height) of the image the model sees
    exif_orientation: int  # EXIF orientation tag value that was applied (1 = none)
    normalization: PixelNormalization | None = None  # 8-bit patches -> the image processor's float values
    preprocess_ms: float = 0.0
    pixels_ref: Any = None  # ray.ObjectRef of `pixels` between the Preprocessor and the VisionEncoder

    def pixels_by_reference(self) -> PreparedImage:
        """This record with its pixels put in Ray's object store (in a Ray worker)."""
        import ray

        return replace(self, pixels=None, pixels_ref=ray.put(self.pixels))

    def release_pixels(self) -> PreparedImage:
        """Drop this copy's hold on the pixels (the ingress's copy: then they live only until the encoder is done)."""
        self.pixels_ref = None
        return self

    async def with_pixels(self) -> PreparedImage:
        """The record with its pixels fetched from the object store (read-only arrays, no copy), by the stage that
        runs the vision tower. Pixels lost meanwhile are a retriable ServiceUnavailableError (503)."""
        if self.pixels_ref is None:
            return self
        from ray.exceptions import ObjectLostError

        from serve_app.errors import ServiceUnavailableError

        try:
            return replace(self, pixels=await self.pixels_ref, pixels_ref=None)
        except ObjectLostError as error:  # their owner, a preprocessor replica, stopped before they were read
            raise ServiceUnavailableError("The page's prepared pixels were lost (a stage restarted); retry.") from error


# numpy has no bfloat16, so bfloat16 embeddings cross the encoder -> decoder hop as their bits in int16: 2 bytes a
# value, as on the device, where float32 took 4 (a 2048x2048 model input: 8.5 instead of 17 MB through the object
# store) plus a conversion at each end. The array dtype each embeddings dtype travels as:
WIRE_DTYPES = {"float32": np.dtype(np.float32), "float16": np.dtype(np.float16), "bfloat16": np.dtype(np.int16)}


@dataclass
class ImageEmbeddings:
    """VisionEncoder output: the vision tower's final output, already in the decoder's hidden size."""

    embeddings: np.ndarray  # (n_image_tokens, text_hidden_size), in `dtype` (bfloat16: its bits, as int16)
    image_grid_thw: np.ndarray  # (3,) int64
    encode_ms: float = 0.0
    batch_size: int = 1  # how many images shared the vision tower call
    dtype: str = "float32"  # the values' dtype: a key of WIRE_DTYPES (the vision tower's dtype)

    @classmethod
    def from_tensor(
        cls, features: torch.Tensor, image_grid_thw: np.ndarray, encode_ms: float = 0.0, batch_size: int = 1
    ) -> ImageEmbeddings:
        """A CPU tensor in the tower's dtype -> its values as they cross Ray (no copy: Ray's pickling copies once)."""
        import torch

        dtype = str(features.dtype).removeprefix("torch.")
        if dtype not in WIRE_DTYPES:
            raise ValueError(f"image embeddings of dtype {dtype} are not supported (one of {list(WIRE_DTYPES)})")
        features = features.detach().contiguous()
        array = (features.view(torch.int16) if dtype == "bfloat16" else features).numpy()
        return cls(array, image_grid_thw, encode_ms=encode_ms, batch_size=batch_size, dtype=dtype)

    def to_tensor(self, dtype: torch.dtype) -> torch.Tensor:
        """The values as a writable tensor of `dtype` (arrays that came through Ray are read-only views of the
        object store: copied once here)."""
        import torch

        wire_dtype = WIRE_DTYPES.get(self.dtype)
        if wire_dtype is None:
            raise ValueError(f"image embeddings of dtype {self.dtype!r} are not supported (one of {list(WIRE_DTYPES)})")
        if self.dtype == "bfloat16" and self.embeddings.dtype != wire_dtype:
            raise ValueError(f"bfloat16 image embeddings must come as int16 bits, not {self.embeddings.dtype}")
        values = torch.from_numpy(np.array(self.embeddings, dtype=wire_dtype, order="C", copy=True))
        if self.dtype == "bfloat16":
            values = values.view(torch.bfloat16)
        return values.to(dtype)


@dataclass
class DetectedText:
    """VisionEncoder output for the PP-OCR family: text-line regions of the oriented image."""

    regions: list  # serve_app.model.lite_ocr.TextRegion: quad in oriented-image pixels, upright RGB crop
    encode_ms: float = 0.0
    batch_size: int = 1


@dataclass
class SpottedLine:
    """A recognized line with its box, from models that locate text themselves (PP-OCR)."""

    text: str
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in pixels of the EXIF-oriented image


@dataclass
class SamplingOptions:
    """Decoding settings (the config's `decoding`: the model version's official ones, greedy)."""

    max_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = -1
    repetition_penalty: float = 1.0
    json_schema: dict | None = None  # guided decoding (vLLM structured outputs) when set
    # Tokens per chunk the engine hands back (the first and last come at once regardless). 1 for streams;
    # the Decoder raises it when only the whole text is wanted: less Python per token.
    stream_interval: int = 1


@dataclass
class DecodeRequest:
    prompt: str
    image: ImageEmbeddings | DetectedText
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    request_id: str = ""


@dataclass
class DecodeChunk:
    """One step of a streamed generation: what is new since the previous chunk."""

    text: str
    token_ids: list[int]
    prompt_tokens: int = 0  # set on the first chunk
    prompt_token_ids: list[int] | None = None  # set on the first chunk: the prompt exactly as the engine got it
    finish_reason: str | None = None  # set on the last chunk: "stop", "length" or "repetition"
    spotted: list[SpottedLine] | None = None  # on the last chunk, from engines that locate text
    warnings: list[str] | None = None  # e.g. max_tokens lowered to fit the context


@dataclass
class DecodeResult:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop", "length", or "repetition" (the repetition guard stopped it)
    prompt_token_ids: list[int] = field(default_factory=list)
    spotted: list[SpottedLine] | None = None
    decode_ms: float = 0.0
    warnings: list[str] = field(default_factory=list)
    # Carried through from the encoder, so the ingress never fetches the embeddings themselves.
    encode_ms: float = 0.0
    encoder_batch_size: int = 1
