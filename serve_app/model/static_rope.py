"""HunyuanOCR's XD-RoPE as a static rope: the same frequencies, without the per-step dynamic update.

transformers (5.19) normalises HunyuanOCR's `rope_type: "xdrope"` to `"dynamic"` with an NTK `alpha`
(`HunYuanVLConfig.convert_rope_params_to_dict`). `HunYuanVLRotaryEmbedding` then computes, once at init,

    base = rope_theta * alpha ** (head_dim / (head_dim - 2))
    inv_freq = 1 / base ** (arange(0, head_dim, 2) / head_dim)

and its forward is wrapped in `@dynamic_rope_update`, which every call evaluates
`seq_len > max_seq_len_cached` (seq_len = max(position_ids) + 1, a tensor on the model's device) on the host:
a device sync per step, a data-dependent branch torch.compile cannot trace (`fullgraph=True` fails), and vLLM
refuses to compile any model whose rope is "dynamic" (`can_enable_torch_compile` in
`vllm/model_executor/models/transformers/utils.py`).

The update only changes `inv_freq` when a position reaches `max_position_embeddings` (growth; the reset branch
needs a previous growth). Below that the frequencies are the init ones, so a `"default"` rope whose
`rope_theta` is the alpha-adjusted base above gives bit-identical `inv_freq` (same Python float base, same
tensor expression in `compute_default_rope_parameters`), with no update and nothing data dependent.

That equality holds only while every position is below `max_position_embeddings`: a caller must bound its
sequences (vLLM: `max_model_len <= max_position_embeddings`) — `make_rope_static` checks the bound it is given.

Pure torch/transformers (no vLLM import): the vLLM model class and the transformers engine can both use it.
"""

from __future__ import annotations

import copy
from typing import Any

STATIC_ROPE_TYPE = "default"
# Keys of the NTK-alpha dynamic rope that mean nothing to a "default" rope.
_DYNAMIC_ONLY_KEYS = ("alpha", "factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "type")


def ntk_alpha_base(rope_theta: float, alpha: float, head_dim: int) -> float:
    """The rope base HunYuanVL's NTK-alpha rope uses (`HunYuanVLRotaryEmbedding.__init__`), as the same float."""
    return rope_theta * alpha ** (head_dim / (head_dim - 2))


def is_ntk_alpha_dynamic(rope_parameters: dict[str, Any] | None) -> bool:
    """True for the rope transformers makes of HunyuanOCR's xdrope: "dynamic" with an NTK alpha."""
    if not rope_parameters:
        return False
    return rope_parameters.get("rope_type") == "dynamic" and bool(rope_parameters.get("alpha"))


def static_rope_parameters(rope_parameters: dict[str, Any], head_dim: int) -> dict[str, Any]:
    """The "default" rope parameters with the same `inv_freq` as an NTK-alpha dynamic rope (XD-RoPE sections
    and any other keys kept)."""
    if not is_ntk_alpha_dynamic(rope_parameters):
        raise ValueError(f"not an NTK-alpha dynamic rope: {rope_parameters}")
    static = {key: value for key, value in rope_parameters.items() if key not in _DYNAMIC_ONLY_KEYS}
    static["rope_type"] = STATIC_ROPE_TYPE
    static["rope_theta"] = ntk_alpha_base(
        float(rope_parameters["rope_theta"]), float(rope_parameters["alpha"]), int(head_dim)
    )
    return static


def check_within_rope_range(text_config, max_len: int) -> None:
    """Raise ValueError unless `max_len` (the longest sequence, prompt + output) <= max_position_embeddings.

    Positions are then at most max_len - 1 (XD-RoPE's text axis counts tokens; its width/height/image axes stay
    below it), so the dynamic rope's growth branch (`max(position_ids) + 1 > max_position_embeddings`) could
    never have fired and the static rope is exact for every request."""
    limit = int(text_config.max_position_embeddings)
    if int(max_len) > limit:
        raise ValueError(
            f"max_model_len {max_len} exceeds max_position_embeddings {limit}: the static rope equals the model's "
            f"dynamic NTK-alpha rope only within max_position_embeddings; set max_model_len <= {limit}"
        )


def make_rope_static(config, max_len: int | None) -> bool:
    """In place: switch a HunYuanVL config's (composite or text) NTK-alpha dynamic rope to the equivalent static
    one. Returns False (config untouched) when the rope is not NTK-alpha dynamic, e.g. already static.

    `max_len` is the longest sequence the caller will ever run (vLLM's max_model_len); it must be
    <= max_position_embeddings (checked). None skips the check: the caller then bounds its sequences itself.
    Apply it before the model is built: `HunYuanVLRotaryEmbedding` reads the rope type at init.
    """
    text_config = config.get_text_config()
    rope_parameters = getattr(text_config, "rope_parameters", None)
    if not is_ntk_alpha_dynamic(rope_parameters):
        return False
    if max_len is not None:
        check_within_rope_range(text_config, max_len)
    text_config.rope_parameters = static_rope_parameters(rope_parameters, text_config.head_dim)
    return True


def static_rope_config(config, max_len: int | None = None):
    """A copy of `config` with the static rope (the original is left as it is), e.g. for
    `HunYuanVLForConditionalGeneration.from_pretrained(path, config=static_rope_config(config, max_len))`."""
    config = copy.deepcopy(config)
    make_rope_static(config, max_len)
    return config
