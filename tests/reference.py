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


def reference_generate(
    checkpoint: str, image: Image.Image, instruction: str, max_new_tokens: int, min_pixels: int, max_pixels: int
) -> tuple[str, list[int]]:
    """Greedy `generate` from pixels, on the image as a viewer shows it (EXIF orientation applied)."""
    import torch

    processor, model = _load(checkpoint)
    image = ImageOps.exif_transpose(image).convert("RGB")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    inputs = processor(
        images=[image], text=[prompt], size={"shortest_edge": min_pixels, "longest_edge": max_pixels}, return_tensors="pt"
    )
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = output[0, inputs["input_ids"].shape[1] :].tolist()
    return processor.tokenizer.decode(new_tokens, skip_special_tokens=True), new_tokens
