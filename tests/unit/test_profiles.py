"""Model versions as data: each profile's official recipe reaches the config, the prompt, the decoding and
the repetition handling; the hub revision is pinned once."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.config import OCRAppConfig, RepetitionGuardConfig
from serve_app.model.model_files import pin_revision
from serve_app.profiles import PROFILES, V1_0_COMMIT, max_image_tokens
from serve_app.results.repetition import TailRepetitionCheck, clean_repeated_substrings, has_tail_repetition
from serve_app.stage_io import DecodeChunk, DecodeResult
from serve_app.stages.decoder import clean_result, guarded
from tests.reference import official_messages

COMMIT = "f" * 40


# ------------------------------------------------------------------------------------------- config


def test_the_default_is_1_5_with_its_official_recipe():
    config = OCRAppConfig()
    assert config.model.version == "1.5" and config.model.revision == "main"
    assert (config.model.min_pixels, config.model.max_pixels) == (512 * 512, 4096 * 4096)
    assert (config.limits.default_max_tokens, config.limits.max_tokens_cap) == (4096, 32768)
    decoding = config.decoding
    assert (decoding.temperature, decoding.top_p, decoding.top_k, decoding.repetition_penalty) == (0.0, 1.0, -1, 1.08)
    assert config.repetition_guard.cleanup_min_chars == 2000


def test_version_1_0_brings_its_own_recipe_and_pinned_commit():
    config = OCRAppConfig.model_validate({"model": {"version": "1.0"}})
    assert config.model.revision == V1_0_COMMIT
    assert config.model.max_pixels == 2048 * 2048
    assert config.limits.max_tokens_cap == 16384
    decoding = config.decoding
    assert (decoding.temperature, decoding.top_p, decoding.top_k, decoding.repetition_penalty) == (0.0, 0.95, 1, 1.0)
    assert config.repetition_guard.cleanup_min_chars == 8000


def test_explicit_fields_win_over_the_profile_and_survive_a_round_trip():
    args = {
        "model": {"version": "1.0", "max_pixels": 1024 * 1024, "revision": COMMIT},
        "limits": {"max_tokens_cap": 100, "default_max_tokens": 50},
        "decoding": {"repetition_penalty": 1.2},
    }
    config = OCRAppConfig.model_validate(args)
    assert config.model.max_pixels == 1024 * 1024 and config.model.revision == COMMIT
    assert config.limits.max_tokens_cap == 100 and config.decoding.repetition_penalty == 1.2
    assert config.decoding.top_k == 1  # the rest of 1.0's decoding stays
    assert OCRAppConfig.model_validate(config.model_dump()) == config


def test_a_local_or_builtin_source_gets_no_hub_revision():
    assert OCRAppConfig.model_validate({"model": {"source": "builtin:tiny-random"}}).model.revision is None


# ------------------------------------------------------------------------------------------- revision


def test_a_branch_is_resolved_once_to_a_commit():
    asked = []
    model = OCRAppConfig().model
    pinned = pin_revision(model, resolve=lambda repo, rev: asked.append((repo, rev)) or COMMIT)
    assert pinned.revision == COMMIT and asked == [("tencent/HunyuanOCR", "main")]
    # Already a commit, or not from the hub: nothing to ask.
    assert pin_revision(pinned, resolve=lambda *_: pytest.fail("asked again")) is pinned
    tiny = OCRAppConfig.model_validate({"model": {"source": "builtin:tiny-random"}}).model
    assert pin_revision(tiny, resolve=lambda *_: pytest.fail("asked for a builtin model")) is tiny


def test_no_hub_and_no_cache_fails_the_start_with_what_to_do(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))

    def unreachable(repo, rev):
        raise ConnectionError("no network")

    with pytest.raises(RuntimeError, match="set model.revision to a commit"):
        pin_revision(OCRAppConfig().model, resolve=unreachable)


# ------------------------------------------------------------------------------------------- prompt


@pytest.mark.parametrize("version", ["1.5", "1.0"])
def test_the_prompt_is_the_official_message_list_through_the_checkpoints_template(version, tmp_path):
    """What the preprocessor renders == what the official client's message list (an empty system message,
    then the image, then the instruction) renders through the checkpoint's own chat template."""
    from transformers import AutoProcessor

    from serve_app.model.tasks import build_task_request
    from serve_app.model.tiny_checkpoint import build_tiny_checkpoint
    from serve_app.stages.preprocessor import ImagePreparer

    checkpoint = build_tiny_checkpoint(tmp_path / version, layout=version)
    config = OCRAppConfig.model_validate({"model": {"source": str(checkpoint), "version": version}})
    preparer = ImagePreparer(config, str(checkpoint))
    processor = AutoProcessor.from_pretrained(checkpoint)
    for task in PROFILES[version].tasks:
        options = {"fields": ["company"]} if task == "fields" else {}
        instruction = build_task_request(task, version=version, **options).instruction
        official = processor.apply_chat_template(official_messages(instruction), add_generation_prompt=True, tokenize=False)
        assert preparer.build_prompt(instruction) == official, task
    # The system message is really there: the template renders its end marker.
    assert preparer.build_prompt("x").count("<｜hy_place▁holder▁no▁3｜>") == 1


# ------------------------------------------------------------------------------------------- repetition


def test_the_official_tail_check():
    assert has_tail_repetition("abc" + "xy" * 8)
    assert not has_tail_repetition("abc" + "xy" * 7)
    assert not has_tail_repetition("abc" + " " * 40)  # a unit of only whitespace does not count
    assert has_tail_repetition("intro " + ("1. " * 8), min_repeats=8, max_unit=256)


def test_the_official_cleanup_keeps_one_copy_of_a_long_looping_tail():
    looping = "x" * 2000 + "ab" * 10
    assert clean_repeated_substrings(looping, 2000) == "x" * 2000 + "ab"
    assert clean_repeated_substrings("ab" * 10, 2000) == "ab" * 10  # under min_chars: untouched (1.5: 2000)
    assert clean_repeated_substrings("x" * 2000 + "ab" * 9, 2000) == "x" * 2000 + "ab" * 9  # 9 < 10 copies


def _chunks(pieces: list[str]):
    async def stream():
        for index, piece in enumerate(pieces):
            yield DecodeChunk(text=piece, token_ids=[index], finish_reason="stop" if index == len(pieces) - 1 else None)

    return stream()


def _run_guard(pieces: list[str], guard: RepetitionGuardConfig) -> list[DecodeChunk]:
    async def collect():
        return [chunk async for chunk in guarded(_chunks(pieces), guard)]

    return asyncio.run(collect())


def test_empty_table_rows_are_not_cut_short():
    """Runs of empty rows are legitimate: the official check starts at 4,000 characters, so a table of 150 empty
    rows (2,700 characters) followed by its content passes through whole."""
    row = "<tr><td></td></tr>"
    pieces = ["<table>"] + [row] * 150 + ["<tr><td>Total</td></tr></table>"]
    chunks = _run_guard(pieces, RepetitionGuardConfig())
    assert len(chunks) == len(pieces) and chunks[-1].finish_reason == "stop"
    text = "".join(chunk.text for chunk in chunks)
    result = clean_result(DecodeResult(text, [], 0, 0, "stop"), RepetitionGuardConfig())
    assert result.text == text and result.warnings == []


def test_a_loop_is_stopped_at_the_official_check_points():
    pieces = ["Total 42\n"] + ["1. "] * 3000
    chunks = _run_guard(pieces, RepetitionGuardConfig())
    assert chunks[-1].finish_reason == "repetition"
    generated = sum(len(chunk.text) for chunk in chunks)
    assert 4000 <= generated < 4010  # stopped at the first check, at 4,000 characters
    result = clean_result(DecodeResult("".join(c.text for c in chunks), [], 0, 0, "repetition"), RepetitionGuardConfig())
    assert result.text == "Total 42\n1. "  # one copy kept
    assert "generation was stopped early" in result.warnings[0]


def test_the_check_runs_every_1000_characters_after_the_start():
    check = TailRepetitionCheck(4000, 1000, 8000, 256, 8)
    assert not check.add("a" * 3999 + "b")  # 4,000: checked, no loop (the tail "ab" is not repeated)
    assert not check.add("xy" * 8)  # 4,016: before the next check point (5,000)
    assert not check.add("z" * 983 + "c")  # 5,000: checked, tail ends in "c"
    assert check.add("xy" * 500)  # 6,000: checked, the tail loops


# ------------------------------------------------------------------------------------------- context


def test_the_largest_page_bound_holds_for_the_processors_sizes():
    from transformers.models.hunyuan_vl.image_processing_pil_hunyuan_vl import smart_resize

    from serve_app.model.hunyuan_vl import image_token_count

    for max_pixels in (512 * 512, 2048 * 2048, 4096 * 4096):
        bound = max_image_tokens(max_pixels)
        for height, width in [(4096, 4096), (20000, 100), (100, 20000), (57000, 290), (16384, 1024), (3, 600)]:
            h, w = smart_resize(height, width, 32, 16384, max_pixels)
            assert image_token_count([1, h // 16, w // 16]) <= bound
    assert max_image_tokens(4096 * 4096) < 18500  # ~16.5 k for a square page


def test_a_decoder_context_too_small_for_a_page_is_refused():
    from serve_app.app import ConfigError, load_config

    args = {"model": {"source": "builtin:tiny-random"}, "decoder": {"engine_args": {"max_model_len": 8192}}}
    with pytest.raises(ConfigError, match="max_model_len 8192 cannot hold a page"):
        load_config(args)
    args["model"]["max_pixels"] = 2048 * 2048
    assert load_config(args).decoder.engine_args["max_model_len"] == 8192  # fits; max_tokens is lowered per request


def test_max_tokens_is_lowered_to_what_fits_with_a_warning():
    from types import SimpleNamespace

    from serve_app.engines.vllm_engine import fit_max_tokens

    params = SimpleNamespace(max_tokens=32768)
    warning = fit_max_tokens(params, prompt_tokens=16600, max_model_len=40000)
    assert params.max_tokens == 23400 and "lowered from 32768 to 23400" in warning
    assert fit_max_tokens(SimpleNamespace(max_tokens=10), 100, 200) is None
    with pytest.raises(ValueError, match="max_model_len is 200"):
        fit_max_tokens(SimpleNamespace(max_tokens=10), 200, 200)


def test_each_version_downloads_only_its_own_files(monkeypatch):
    import huggingface_hub

    from serve_app.model.model_files import resolve_model_path

    calls = []

    def fake_snapshot_download(**kwargs):
        calls.append(kwargs)
        return "/snapshots/" + kwargs["revision"]

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    latest = OCRAppConfig.model_validate({"model": {"revision": COMMIT}}).model
    assert resolve_model_path(latest) == f"/snapshots/{COMMIT}"
    assert calls[-1]["ignore_patterns"] == ["v1.0/*", "dflash/*"] and calls[-1]["repo_id"] == "tencent/HunyuanOCR"
    archived = OCRAppConfig.model_validate({"model": {"version": "1.0", "revision": COMMIT, "subfolder": "v1.0"}}).model
    assert resolve_model_path(archived) == f"/snapshots/{COMMIT}/v1.0"
    assert calls[-1]["allow_patterns"] == ["v1.0/*"]
    old = OCRAppConfig.model_validate({"model": {"version": "1.0"}}).model
    resolve_model_path(old)
    assert calls[-1]["revision"] == V1_0_COMMIT
