"""A tiny random checkpoint of the HunyuanOCR architecture, built offline and deterministically.

The real model cannot be downloaded on machines without the hub, yet tests and the `builtin:tiny-random`
model source need something that loads exactly like it: same `model_type` (`hunyuan_vl`), same classes,
same processor, same special-token layout and chat template style, same XD-RoPE parameter shape. This
module builds that in about a second:

- a byte-level BPE tokenizer trained with `tokenizers` on generated Chinese + English text (digits,
  punctuation, common characters and the official HunyuanOCR instructions), loaded through the same
  tokenizer class transformers picks for `hunyuan_vl` (Qwen2Tokenizer) so the saved files round-trip;
- the special tokens HunYuanVLProcessor needs, exposed as tokenizer attributes via `extra_special_tokens`
  (image, image start/end, image newline) plus bos/eos/pad, with ids matching the model config;
- a chat template in the style of the real one that loops directly over `message['content']` (vLLM
  needs that to recognise multimodal content);
- random float32 weights (text head_dim 32, which vLLM's CPU attention supports; untied lm_head so a
  random model emits visible text; vision tower with patch 16 and spatial merge 2 like the real one);
- an image processor with a small pixel budget so tests stay fast.

Two config layouts, as the two releases ship them (`layout`):
- "1.5" (default): a nested `text_config`, with the text backbone keys also kept at the top level;
  vision `max_vit_seq_len` 65,536 and `img_max_token_num` 16,384; no repetition_penalty in
  generation_config.json.
- "1.0": the text keys flat at the top level (but for an untied tie_word_embeddings, which transformers
  reads from text_config only) with a legacy `rope_scaling` ({"type": "xdrope", ...,
  "xdrope_section"}); vision `max_vit_seq_len` 16,384 and `img_max_token_num` 4,096; repetition_penalty 1.03
  in generation_config.json (the serving profile sends 1.0's official 1.0 explicitly).
Both load into the same transformers model with the same weights (tested).

Weights and configs are byte-identical across builds with the same seed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

CACHE_ROOT = Path("~/.cache/hunyuan-ocr-serve").expanduser()
LAYOUTS = ("1.5", "1.0")


def default_cache_dir(layout: str = "1.5") -> Path:
    return CACHE_ROOT / f"tiny-random-v2-{layout}"

# Special tokens, spelled like the real HunyuanOCR vocabulary (its ids are 120000+, ours follow the BPE vocab).
BOS_TOKEN = "<｜hy_begin▁of▁sentence｜>"
EOD_TOKEN = "<｜hy_end▁of▁sentence｜>"
PAD_TOKEN = "<｜hy_▁pad▁｜>"
USER_TOKEN = "<｜hy_User｜>"
ASSISTANT_TOKEN = "<｜hy_Assistant｜>"
EOS_TOKEN = "<｜hy_place▁holder▁no▁2｜>"  # end of an assistant turn; generation stops here
SYSTEM_END_TOKEN = "<｜hy_place▁holder▁no▁3｜>"
IMAGE_START_TOKEN = "<｜hy_place▁holder▁no▁100｜>"
IMAGE_END_TOKEN = "<｜hy_place▁holder▁no▁101｜>"
IMAGE_TOKEN = "<｜hy_place▁holder▁no▁102｜>"
IMAGE_NEWLINE_TOKEN = "<｜hy_place▁holder▁no▁103｜>"

SPECIAL_TOKENS = [
    BOS_TOKEN,
    EOD_TOKEN,
    PAD_TOKEN,
    USER_TOKEN,
    ASSISTANT_TOKEN,
    EOS_TOKEN,
    SYSTEM_END_TOKEN,
    IMAGE_START_TOKEN,
    IMAGE_END_TOKEN,
    IMAGE_TOKEN,
    IMAGE_NEWLINE_TOKEN,
]

BPE_VOCAB_SIZE = 1536

# Pixel budget of the tiny checkpoint's image processor (the serving pipeline passes its own budget).
MIN_PIXELS = 64 * 64
MAX_PIXELS = 256 * 256

TEXT_CONFIG = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 32768,
    "attention_bias": False,
    "tie_word_embeddings": False,
    # Shaped like the real model's rope_scaling: xdrope (normalised to "dynamic" with an NTK alpha) and a
    # four-axis section (position, width, height, image index) summing to head_dim / 2.
    "rope_parameters": {
        "rope_type": "xdrope",
        "rope_theta": 10000.0,
        "alpha": 1000.0,
        "factor": 1.0,
        "beta_fast": 32,
        "beta_slow": 1,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "xdrope_section": [4, 4, 4, 4],
    },
}

VISION_CONFIG = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "hidden_act": "gelu",
    "patch_size": 16,
    "spatial_merge_size": 2,
    "temporal_patch_size": 1,
    "num_channels": 3,
    "rms_norm_eps": 1e-5,
    # Size of the learned positional grid (interpolated to every image's grid): 512 / 16 = 32 per side.
    "max_image_size": 512,
    "min_image_size": 64,
    "img_max_token_num": 4096,
    "max_vit_seq_len": 16384,
}

# Loops directly over message['content'] (vLLM detects the OpenAI content format from that loop).
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for content in message['content'] %}"
    "{%- if content['type'] == 'text' %}{{- content['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '" + SYSTEM_END_TOKEN + "' }}"
    "{%- elif message['role'] == 'user' %}"
    "{{- '" + USER_TOKEN + "' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for content in message['content'] %}"
    "{%- if content['type'] in ['image', 'image_url'] or 'image' in content %}"
    "{{- '" + IMAGE_START_TOKEN + IMAGE_TOKEN + IMAGE_END_TOKEN + "' }}"
    "{%- elif content['type'] == 'text' %}{{- content['text'] }}"
    "{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- '" + ASSISTANT_TOKEN + "' }}"
    "{%- if message['content'] is string %}{{- message['content'] }}"
    "{%- else %}{%- for content in message['content'] %}"
    "{%- if content['type'] == 'text' %}{{- content['text'] }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '" + EOS_TOKEN + "' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '" + ASSISTANT_TOKEN + "' }}{%- endif %}"
)

OFFICIAL_INSTRUCTIONS = [
    "提取图中的文字。",
    "Extract the text in the image.",
    "检测并识别图片中的文字，将文本坐标格式化输出。",
    "Detect and recognize text in the image, and output the text coordinates in a formatted manner.",
    "识别图片中的公式，用 LaTeX 格式表示。",
    "Identify the formula in the image and represent it using LaTeX format.",
    "把图中的表格解析为 HTML。",
    "Parse the table in the image into HTML.",
    "解析图中的图表，对于流程图使用 Mermaid 格式表示，其他图表使用 Markdown 格式表示。",
    "提取文档图片中正文的所有信息用 markdown 格式表示，其中页眉、页脚部分忽略，表格用 html 格式表达，"
    "文档中公式用 latex 格式表示，按照阅读顺序组织进行解析。",
    "Extract all information from the main body of the document image and represent it in markdown format.",
    "提取图片中的字段内容，并按照 JSON 格式返回。",
    "Extract the content of the fields from the image and return it in JSON format.",
    "将图中文字翻译为英文。",
    "Translate the text in the image into English.",
]

COMMON_CHINESE = (
    "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后"
    "小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长"
    "知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最"
    "间新什打便位因重被走电四第门相次东政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市"
    "眼体别处总才场师书比住员九笑性通目华报立马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计"
    "图片字识别检测提取格式输出表格公式文档页码日期金额总计价格数量单位名称地址电话号码发票收据商品合计税率"
    "银行账户姓名编号类型备注说明信息内容标题段落行列区域坐标翻译英语中文标点符号元角分找零现金支付卡"
)

ENGLISH_WORDS = (
    "the of and to in is for on with as by at from this that text image extract recognize detect output "
    "format table formula document page date total amount price quantity name address phone number invoice "
    "receipt item tax bank account code type note title paragraph line column region coordinates translate "
    "english chinese markdown html json latex chart main body header footer reading order field content "
    "store cash change card payment subtotal discount qty unit thank you welcome please keep company road "
    "street city tel fax email www com sdn bhd gst rm usd cny hello world open close"
).split()

PUNCTUATION = list("，。、；：？！“”‘’（）《》【】—…·.,;:?!'\"()[]{}<>-_/\\|@#$%^&*+=~`") + ["\n", "\t", "  "]


def _training_corpus(seed: int) -> list[str]:
    """Generated zh+en lines: deterministic for a seed, covering what OCR prompts and outputs contain."""
    rng = random.Random(seed)
    lines: list[str] = []
    for instruction in OFFICIAL_INSTRUCTIONS:
        lines.extend([instruction] * 20)
    chars = list(COMMON_CHINESE)
    for _ in range(1500):
        parts: list[str] = []
        for _ in range(rng.randint(3, 10)):
            kind = rng.random()
            if kind < 0.35:
                parts.append("".join(rng.choice(chars) for _ in range(rng.randint(1, 6))))
            elif kind < 0.65:
                word = rng.choice(ENGLISH_WORDS)
                parts.append(word.capitalize() if rng.random() < 0.3 else word.upper() if rng.random() < 0.1 else word)
            elif kind < 0.85:
                parts.append(
                    rng.choice(
                        [
                            str(rng.randint(0, 9999)),
                            f"{rng.randint(0, 999)}.{rng.randint(0, 99):02d}",
                            f"{rng.randint(2000, 2030)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                            f"({rng.randint(0, 999)},{rng.randint(0, 999)})",
                        ]
                    )
                )
            else:
                parts.append(rng.choice(PUNCTUATION))
        lines.append(rng.choice([" ", "", " "]).join(parts))
    # Every character on its own so each one gets a merged token.
    lines.extend(chars)
    lines.append("0123456789 " * 5)
    return lines


def _build_tokenizer(seed: int):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer

    # The same normalizer / pre-tokenizer / decoder Qwen2Tokenizer (the class transformers uses for
    # hunyuan_vl) rebuilds from vocab + merges, so the trained model round-trips through save/load.
    bpe = Tokenizer(models.BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    bpe.train_from_iterator(_training_corpus(seed), trainer=trainer)

    vocab = bpe.get_vocab()
    # Merges in rank order, read back from the serialized model.
    merges = json.loads(bpe.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]

    tokenizer = Qwen2Tokenizer(
        vocab=dict(sorted(vocab.items(), key=lambda item: item[1])),
        merges=merges,
        unk_token=None,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        add_prefix_space=False,
        extra_special_tokens={
            "image_token": IMAGE_TOKEN,
            "image_start_token": IMAGE_START_TOKEN,
            "image_end_token": IMAGE_END_TOKEN,
            "image_newline_token": IMAGE_NEWLINE_TOKEN,
            "eod_token": EOD_TOKEN,
            "user_token": USER_TOKEN,
            "assistant_token": ASSISTANT_TOKEN,
            "system_end_token": SYSTEM_END_TOKEN,
        },
        model_max_length=32768,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    # Qwen2Tokenizer already appended the named ones right after the BPE vocabulary (bos, eos, pad, then the
    # extra ones in dict order: deterministic ids); this guarantees each is a special, never-split token.
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _token_ids(tokenizer) -> dict[str, int]:
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in SPECIAL_TOKENS}
    for token, token_id in ids.items():
        if token_id is None or tokenizer.convert_ids_to_tokens(token_id) != token:
            raise RuntimeError(f"special token {token!r} did not get its own id")
    return ids


def _build_config(ids: dict[str, int], vocab_size: int):
    from transformers import HunYuanVLConfig

    text_config = dict(TEXT_CONFIG)
    text_config.update(
        vocab_size=vocab_size,
        bos_token_id=ids[BOS_TOKEN],
        eos_token_id=ids[EOS_TOKEN],
        pad_token_id=ids[PAD_TOKEN],
        eod_token_id=ids[EOD_TOKEN],
        sep_token_id=None,
    )
    text_config["rope_parameters"] = dict(TEXT_CONFIG["rope_parameters"])
    config = HunYuanVLConfig(
        text_config=text_config,
        vision_config=dict(VISION_CONFIG),
        image_token_id=ids[IMAGE_TOKEN],
        im_start_id=ids[IMAGE_START_TOKEN],
        im_end_id=ids[IMAGE_END_TOKEN],
        im_newline_id=ids[IMAGE_NEWLINE_TOKEN],
        tie_word_embeddings=False,
        bos_token_id=ids[BOS_TOKEN],
        eos_token_id=ids[EOS_TOKEN],
        pad_token_id=ids[PAD_TOKEN],
    )
    config.architectures = ["HunYuanVLForConditionalGeneration"]
    config.dtype = "float32"
    return config


def build_full_size_config(ids: dict[str, int], vocab_size: int = 120818):
    """A HunYuanVLConfig with the real HunyuanOCR 1.0 dimensions (for full-size random checkpoints and
    memory plans, bench/gpu_plan.py), special-token ids from `ids` (as `_token_ids` returns them).

    Text: hidden 1024, 24 layers, 16 heads, 8 KV heads, head_dim 128, intermediate 3584, vocab 120818, tied
    embeddings, xdrope section [16, 16, 16, 16]. Vision: hidden 1152, intermediate 4304, 27 layers, 16 heads,
    patch 16, spatial merge 2, positional grid for 2048-pixel sides (min 512). bfloat16, like the release.
    """
    config = _build_config(ids, vocab_size)
    text = config.text_config
    for key, value in {
        "hidden_size": 1024,
        "intermediate_size": 3584,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "tie_word_embeddings": True,
    }.items():
        setattr(text, key, value)
    rope = dict(text.rope_parameters)
    rope["mrope_section" if "mrope_section" in rope else "xdrope_section"] = [16, 16, 16, 16]
    text.rope_parameters = rope
    vision = config.vision_config
    for key, value in {
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "num_key_value_heads": 16,
        "max_image_size": 2048,
        "min_image_size": 512,
        "text_hidden_size": 1024,
    }.items():
        setattr(vision, key, value)
    config.tie_word_embeddings = True
    config.dtype = "bfloat16"
    return config


def _rewrite_config_layout(output: Path, layout: str) -> None:
    """save_pretrained writes transformers' nested layout; rewrite config.json (and generation_config.json)
    the way the release of `layout` ships them."""
    config_path, generation_path = output / "config.json", output / "generation_config.json"
    config = json.loads(config_path.read_text())
    generation = json.loads(generation_path.read_text())
    text = dict(config["text_config"])
    text.pop("model_type", None)
    vision = config["vision_config"]
    if layout == "1.5":
        for key, value in text.items():  # duplicates at the top level, "for checkpoint compatibility"
            config.setdefault(key, value)
        vision.update(max_vit_seq_len=65536, img_max_token_num=16384)
    elif layout == "1.0":
        # Text keys flat, as 1.0 ships them, except tie_word_embeddings: transformers reads a flat layout's tie
        # flag from text_config only (default True), and the real 1.0 is tied, but this tiny model is untied
        # so that its random output is visible text.
        config["text_config"] = {"tie_word_embeddings": text.pop("tie_word_embeddings")}
        rope = dict(text.pop("rope_parameters"))
        rope.pop("rope_type", None)
        section = rope.pop("mrope_section")
        theta = rope.pop("rope_theta")
        for key, value in text.items():
            config.setdefault(key, value)
        config["rope_theta"] = theta
        config["rope_scaling"] = {"type": "xdrope", **rope, "xdrope_section": section}
        vision.update(max_vit_seq_len=16384, img_max_token_num=4096)
        generation["repetition_penalty"] = 1.03
    else:
        raise ValueError(f"unknown checkpoint layout {layout!r}; one of {LAYOUTS}")
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    generation_path.write_text(json.dumps(generation, indent=2, sort_keys=True) + "\n")


def build_tiny_checkpoint(output_dir: str | Path, seed: int = 0, layout: str = "1.5") -> Path:
    """Build the tiny random HunyuanOCR-architecture checkpoint into `output_dir` and return its path,
    with the config layout of release `layout` ("1.5" or "1.0").

    Offline and deterministic: the same seed gives byte-identical weights, configs and tokenizer files.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown checkpoint layout {layout!r}; one of {LAYOUTS}")
    import torch
    from transformers import GenerationConfig, HunYuanVLForConditionalGeneration, HunYuanVLProcessor
    from transformers.models.hunyuan_vl.image_processing_hunyuan_vl import HunYuanVLImageProcessor

    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)

    tokenizer = _build_tokenizer(seed)
    ids = _token_ids(tokenizer)
    vocab_size = len(tokenizer)
    config = _build_config(ids, vocab_size)

    torch_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        with torch.device("cpu"):
            model = HunYuanVLForConditionalGeneration(config).to(torch.float32).eval()
    finally:
        torch.random.set_rng_state(torch_state)
    model.generation_config = GenerationConfig(
        bos_token_id=ids[BOS_TOKEN], eos_token_id=ids[EOS_TOKEN], pad_token_id=ids[PAD_TOKEN]
    )
    model.save_pretrained(output, safe_serialization=True)

    image_processor = HunYuanVLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    processor = HunYuanVLProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(output)
    _rewrite_config_layout(output, layout)
    return output


def ensure_tiny_checkpoint(cache_dir: Path | None = None, layout: str = "1.5") -> Path:
    """Build the tiny checkpoint into `cache_dir` once (atomically) and return its path.

    Builds into a temporary sibling directory and renames it into place; if another process finished first,
    its checkpoint is used and ours is discarded.
    """
    target = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir(layout)
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    try:
        build_tiny_checkpoint(staging, layout=layout)
        try:
            os.rename(staging, target)
        except OSError:
            # Another process won the race (target exists and is non-empty), or a stale empty dir is in the way.
            if (target / "config.json").is_file():
                return target
            if target.is_dir() and not any(target.iterdir()):
                target.rmdir()
                os.rename(staging, target)
            else:
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("output_dir", type=Path, help="directory to write the checkpoint into")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--layout", choices=LAYOUTS, default="1.5", help="config layout of this release")
    args = parser.parse_args(argv)
    path = build_tiny_checkpoint(args.output_dir, seed=args.seed, layout=args.layout)
    print(path)


if __name__ == "__main__":
    main()
