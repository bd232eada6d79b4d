"""transformers' own pipeline, used as the ground truth the served graph must match token for token."""

from __future__ import annotations

from functools import lru_cache

from PIL import Image, ImageOps


@lru_cache(maxsize=2)
def _load(checkpoint: str):
    from transformers import AutoProcessor, HunYuanVLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(checkpoint, backend="pil")
    model = HunYuanVLForConditionalGeneration.from_pretrained(checkpoint, dtype="float32").eval()
    return processor, model


def official_messages(instruction: str) -> list[dict]:
    """The message list HunyuanOCR's official clients send (1.0 after its 2025-11-28 fix, and 1.5):
    an empty system message, then the image, then the instruction."""
    return [
        {"role": "system", "content": ""},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]},
    ]


def reference_generate(
    checkpoint: str,
    image: Image.Image,
    instruction: str,
    max_new_tokens: int,
    min_pixels: int,
    max_pixels: int,
    repetition_penalty: float = 1.0,
) -> tuple[str, list[int]]:
    """Greedy `generate` from pixels with the official message list, on the image as a viewer shows it (EXIF
    orientation applied)."""
    import torch

    processor, model = _load(checkpoint)
    image = ImageOps.exif_transpose(image).convert("RGB")
    messages = official_messages(instruction)
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(
        images=[image], text=[prompt], size={"shortest_edge": min_pixels, "longest_edge": max_pixels}, return_tensors="pt"
    )
    with torch.inference_mode():
        output = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=repetition_penalty
        )
    new_tokens = output[0, inputs["input_ids"].shape[1] :].tolist()
    return processor.tokenizer.decode(new_tokens, skip_special_tokens=True), new_tokens
