"""The prompt enhancer on the tiny model's resident text encoder: shared weights, the chat it is given,
determinism, every way a rewrite is refused (each made to happen with the real model), the start-up
self-test, ENHANCER=off, and both prompts kept in the store, the PNG and Info.

The tiny model's weights are random, so what it writes is noise: the quality of the rewrites can only
be judged with the real weights. Its noise is still real model output, which is what these tests need:
they pick seeds that make it finish early, write nothing, or write unreadable bytes. A clean rewrite is
made by stopping the real generation at a token it was about to write (an extra stop token).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from bench.measure import run_queue
from bot.discord_bot.job_messages import info_embed
from bot.generation import GenerationRequest, parameters_text
from bot.image_files import read_parameters
from bot.image_size import ImageSize
from bot.jobs.store import JobStore
from bot.model.enhancer import (
    SELF_TEST_NEW_TOKENS,
    SELF_TEST_PROMPT,
    SYSTEM_PROMPT,
    EnhancedPrompt,
    PromptEnhancer,
    check_answer,
    clean_answer,
    is_text,
    parameter_bytes,
)
from bot.model.pipeline_service import PipelineService
from bot.settings import ConfigError, Settings
from bot.translations import Text
from conftest import tiny_env
from tiny_model import TINY_REPO_ID

PROMPT = "a red fox in the snow"
GENEROUS_S = 300.0  # a wall-clock limit no tiny-model rewrite reaches, even on a busy machine
# Enough new tokens for every outcome these tests look for, and a fraction of the CPU time of 256.
TEST_TOKENS = 32


@pytest.fixture(scope="module")
def tiny_pipe(hub_cache):
    from diffusers import ZImagePipeline

    return ZImagePipeline.from_pretrained(TINY_REPO_ID, local_files_only=True)


def make_enhancer(pipe, **options) -> PromptEnhancer:
    options.setdefault("time_limit_s", GENEROUS_S)
    options.setdefault("max_new_tokens", TEST_TOKENS)
    return PromptEnhancer(pipe.text_encoder, pipe.tokenizer, **options)


@pytest.fixture(scope="module")
def enhancer(tiny_pipe) -> PromptEnhancer:
    return make_enhancer(tiny_pipe)


def seed_where(
    enhancer: PromptEnhancer, condition: Callable[[EnhancedPrompt], bool], prompt: str = PROMPT, tries: int = 80
) -> tuple[int, EnhancedPrompt]:
    for seed in range(tries):
        result = enhancer.enhance(prompt, seed)
        if condition(result):
            return seed, result
    raise AssertionError(f"no seed in 0..{tries - 1} gave the wanted outcome")


def stop_where(
    enhancer: PromptEnhancer, wanted: Callable[[str], bool], prompt: str = PROMPT, tries: int = 40
) -> tuple[int, int, str]:
    """A seed, and a token the model writes with it, such that stopping there leaves an answer that
    cleans up to `wanted` text: the real generation, ended by an extra stop token."""
    for seed in range(tries):
        tokens = enhancer.enhance(prompt, seed).token_ids
        for end in range(1, len(tokens)):
            text = clean_answer(enhancer.tokenizer.decode(tokens[:end], skip_special_tokens=True))
            if wanted(text) and tokens[end] not in tokens[:end]:
                return seed, tokens[end], text
    raise AssertionError("the tiny model wrote no such prefix")


def clean_rewrite(enhancer: PromptEnhancer, prompt: str = PROMPT) -> tuple[int, int, str]:
    return stop_where(enhancer, lambda text: check_answer(text) is None, prompt)


# ----- the model: shared weights, the chat, determinism ---------------------------------------------


def test_the_head_is_the_encoders_embedding_and_nothing_is_added(tiny_pipe):
    encoder = tiny_pipe.text_encoder
    storage_before = {parameter.untyped_storage().data_ptr() for parameter in encoder.parameters()}
    bytes_before = parameter_bytes(encoder)
    enhancer = make_enhancer(tiny_pipe)
    model = enhancer.model
    assert enhancer.parameter_storage() == storage_before
    assert parameter_bytes(model) == bytes_before
    assert model.model is encoder
    assert model.lm_head.weight is encoder.embed_tokens.weight
    # No parameter of the wrapper is left on the meta device, and none was made anew.
    assert all(parameter.device.type != "meta" for parameter in model.parameters())
    assert {id(parameter) for parameter in model.parameters()} == {id(p) for p in encoder.parameters()}
    # The head really is the tied embedding: logits are the last hidden states times the embedding.
    ids = enhancer.input_ids("a fox")
    with torch.inference_mode():
        hidden = encoder(input_ids=ids).last_hidden_state
        logits = model(input_ids=ids).logits
        expected = hidden @ encoder.embed_tokens.weight.T
    assert torch.allclose(logits, expected, atol=1e-5)
    # A text encoder without tied embeddings has no head to share.
    untied = type(encoder.config)(**{**encoder.config.to_dict(), "tie_word_embeddings": False})
    with torch.device("meta"):
        body = type(encoder)(untied)
    with pytest.raises(ValueError, match="not tied"):
        PromptEnhancer(body, tiny_pipe.tokenizer)


def test_the_chat_has_the_system_prompt_and_thinking_turned_off(enhancer):
    chat = enhancer.chat_text('一只猫 on a sign that says "OPEN"')
    assert chat.startswith("<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>")
    assert '<|im_start|>user\n一只猫 on a sign that says "OPEN"<|im_end|>' in chat
    # Thinking off: the assistant's turn opens with an empty, closed think block, so it answers at once.
    assert chat.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    thinking = enhancer.tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True, enable_thinking=True
    )
    assert "</think>" not in thinking  # the switch is what closes it
    for rule in ("same language", "exactly", "prompt only", "composition", "lighting"):
        assert rule in SYSTEM_PROMPT


def test_the_same_seed_gives_the_same_rewrite_and_leaves_the_callers_random_state_alone(enhancer):
    torch.manual_seed(1234)
    expected_next = torch.rand(3)
    torch.manual_seed(1234)
    first = enhancer.enhance(PROMPT, 5)
    assert torch.equal(torch.rand(3), expected_next)
    again = enhancer.enhance(PROMPT, 5)
    other = enhancer.enhance(PROMPT, 6)
    assert first.token_ids and first.token_ids == again.token_ids and first.raw == again.raw
    assert other.token_ids != first.token_ids


def test_a_clean_rewrite_is_used(tiny_pipe, enhancer):
    seed, stop, text = clean_rewrite(enhancer)
    stopping = make_enhancer(tiny_pipe, stop_token_ids=(stop,))
    result = stopping.enhance(PROMPT, seed)
    assert result.enhanced and result.note is None
    assert result.text == text and result.original == PROMPT
    assert stop not in result.token_ids


def test_the_static_cache_is_reused_and_a_failing_fast_path_falls_back_to_plain_generation(tiny_pipe):
    # Compiling is for CUDA; on the CPU transformers runs the same static-cache path uncompiled.
    fast = make_enhancer(tiny_pipe)
    fast.fast = True
    ids = fast.input_ids(PROMPT)
    first = fast.generate(ids, seed=3)
    keys = fast.static_cache.layers[0].keys.data_ptr()
    again = fast.generate(ids, seed=3)
    assert first.fast_path and again.fast_path and first.token_ids == again.token_ids
    assert fast.static_cache.layers[0].keys.data_ptr() == keys  # one cache, same addresses, every call
    # A cache too short for the chat fails inside the model: that call and all later ones go plain.
    cramped = make_enhancer(tiny_pipe, cache_tokens=ids.shape[1] // 2)
    cramped.fast = True
    generated = cramped.generate(ids, seed=3)
    assert not generated.fast_path and generated.token_ids
    assert cramped.fast is False and cramped.fast_error.startswith("IndexError")


def test_a_self_test_failed_on_the_fast_path_is_tried_again_with_plain_generation(tiny_pipe):
    enhancer = make_enhancer(tiny_pipe)
    plain_problem = enhancer.self_test()  # noise from random weights: no text
    assert plain_problem is not None
    enhancer.fast = True
    assert enhancer.self_test() == plain_problem
    assert enhancer.fast is False
    assert enhancer.fast_error == f"self-test on the compiled path: {plain_problem}"


def test_the_self_test_writes_only_its_few_tokens_and_noise_fails_it(tiny_pipe):
    # Random weights write bytes and seldom a stop token: the self-test stops at its bound all the same.
    enhancer = make_enhancer(tiny_pipe, max_new_tokens=2 * SELF_TEST_NEW_TOKENS)
    problem = enhancer.self_test()
    generated = enhancer.self_test_generated
    assert generated is not None and len(generated.token_ids) == SELF_TEST_NEW_TOKENS and not generated.finished
    assert str(problem) == "its answer to a test prompt was not text"
    # The start of the answer a whole rewrite of the same prompt writes (same seed, same path): only shorter.
    whole = enhancer.enhance(SELF_TEST_PROMPT, 0)
    assert whole.new_tokens == 2 * SELF_TEST_NEW_TOKENS and whole.token_ids[:SELF_TEST_NEW_TOKENS] == tuple(
        generated.token_ids
    )


def test_a_self_test_answer_cut_off_at_its_bound_passes_when_it_is_text_and_warms_the_cache_rewrites_use(tiny_pipe):
    # The tiny model's answer starts with a few letters: a self-test bounded there reads text, not ended.
    tokens = make_enhancer(tiny_pipe).enhance(SELF_TEST_PROMPT, 0).token_ids
    decoded = [clean_answer(tiny_pipe.tokenizer.decode(tokens[:count])) for count in range(len(tokens) + 1)]
    count = max(count for count, text in enumerate(decoded) if is_text(text))
    enhancer = make_enhancer(tiny_pipe, self_test_tokens=count)
    enhancer.fast = True  # the static-cache path (compiled, with its CUDA graph, on CUDA)
    assert enhancer.self_test() is None
    generated = enhancer.self_test_generated
    assert generated is not None and len(generated.token_ids) == count
    assert not generated.finished and generated.fast_path and enhancer.fast
    # The cache the self-test ran in has the length of every rewrite's, and rewrites reuse it as it is.
    keys = enhancer.static_cache.layers[0].keys
    assert keys.shape[2] == enhancer.cache_tokens
    assert enhancer.enhance(PROMPT, 1).token_ids
    assert enhancer.static_cache.layers[0].keys.data_ptr() == keys.data_ptr()


# ----- every way a rewrite is not used --------------------------------------------------------------


def test_running_out_of_tokens_keeps_the_original(tiny_pipe):
    short = make_enhancer(tiny_pipe, max_new_tokens=6)
    _, result = seed_where(short, lambda r: r.new_tokens == 6)
    assert str(result.note) == "the enhancer did not finish within 6 tokens"
    assert result.text == PROMPT and not result.enhanced


def test_the_wall_clock_limit_stops_a_rewrite(tiny_pipe):
    hurried = make_enhancer(tiny_pipe, time_limit_s=0.0)
    _, result = seed_where(hurried, lambda r: r.note is not None and "longer" in str(r.note))
    assert str(result.note) == "the enhancer took longer than 0 s"
    assert result.new_tokens == 1  # stopped after the first token, not after the budget
    assert result.text == PROMPT


def test_an_empty_answer_keeps_the_original(enhancer):
    _, result = seed_where(enhancer, lambda r: str(r.note) == "the enhancer returned nothing")
    assert result.token_ids == () and result.text == PROMPT


def test_an_answer_too_long_for_a_prompt_keeps_the_original(tiny_pipe, enhancer):
    seed, stop, text = stop_where(enhancer, lambda text: len(text) > 3)
    result = make_enhancer(tiny_pipe, max_chars=3, stop_token_ids=(stop,)).enhance(PROMPT, seed)
    assert str(result.note) == f"the enhanced prompt was too long ({len(text)} characters, at most 3)"
    assert result.text == PROMPT


def test_unreadable_output_keeps_the_original(tiny_pipe, enhancer):
    seed, stop, text = stop_where(enhancer, lambda text: bool(text) and not is_text(text))
    result = make_enhancer(tiny_pipe, stop_token_ids=(stop,)).enhance(PROMPT, seed)
    assert str(result.note) == "the enhancer's answer was not readable text"
    assert result.text == PROMPT and clean_answer(result.raw) == text


def test_a_failure_inside_the_model_keeps_the_original(enhancer, caplog):
    # A seed no random generator takes: torch raises inside the rewrite.
    with caplog.at_level(logging.WARNING, logger="bot.model.enhancer"):
        result = enhancer.enhance(PROMPT, 2**64)
    assert str(result.note) == "the enhancer failed (ValueError)" and result.text == PROMPT
    assert "prompt enhancement failed" in caplog.text
    assert enhancer.enhance(PROMPT, 1).token_ids  # and the next rewrite runs


def test_a_prompt_too_long_for_the_cache_is_not_rewritten(tiny_pipe):
    small = make_enhancer(tiny_pipe, cache_tokens=400)
    result = small.enhance("a fox " * 100, 1)
    assert str(result.note) == "the prompt is too long to enhance" and result.token_ids == ()


@pytest.mark.parametrize(
    ("answer", "note"),
    [
        ("I'm sorry, but I can't help with that.", "the enhancer declined to rewrite this prompt"),
        ("As an AI language model, I cannot create that.", "the enhancer declined to rewrite this prompt"),
        ("抱歉，我无法满足这个请求。", "the enhancer declined to rewrite this prompt"),
        ("!!!! ???? ....", "the enhancer's answer was not readable text"),
        ("a cat \x07\x08 on a mat", "the enhancer's answer was not readable text"),
        ("", "the enhancer returned nothing"),
        ("a fox, " * 300, "the enhanced prompt was too long (2099 characters, at most 1500)"),
        ("a sorry-looking dog in the rain, soft light", None),
        ("一只橘猫趴在窗台上，阳光洒落，招牌上写着“OPEN”", None),
    ],
)
def test_answers_that_cannot_be_prompts(answer, note):
    problem = check_answer(clean_answer(answer))
    assert (None if problem is None else str(problem)) == note


def test_text_to_draw_must_survive_the_rewrite():
    original = 'a shop sign that says "OPEN 24/7" and a banner “大减价”'
    kept = 'a small shop at night, a neon sign reading "OPEN 24/7", a red banner with “大减价”, rain'
    assert check_answer(kept, original=original) is None
    dropped = "a small shop at night, a neon sign reading OPEN, a red banner with “大减价”, rain"
    assert str(check_answer(dropped, original=original)) == (
        'the enhanced prompt did not keep the text to draw ("OPEN 24/7")'
    )
    assert check_answer("a fox", original="a fox") is None


def test_the_answer_is_cleaned_of_labels_think_blocks_and_wrapping_quotes():
    answer = '<think>\nhmm\n</think>\n\nPrompt: "a fox in snow,\n soft light"'
    assert clean_answer(answer) == "a fox in snow, soft light"
    assert clean_answer('A sign that says "OPEN", neon') == 'A sign that says "OPEN", neon'
    assert clean_answer("提示词：一只猫") == "一只猫"
    assert is_text("一只猫") and not is_text("\ufffd\ufffd a")


# ----- the service: self-test, ENHANCER=off, the same queue ----------------------------------------


def first_token_of_self_test(tiny_pipe) -> int:
    return make_enhancer(tiny_pipe).enhance(SELF_TEST_PROMPT, 0).token_ids[0]


def test_a_failed_self_test_turns_the_enhancer_off_and_the_bot_still_starts(tiny_pipe, tiny_settings, caplog):
    # Stopping at the first token the self-test's answer would have makes that answer empty, for real.
    options = {
        "stop_token_ids": (first_token_of_self_test(tiny_pipe),),
        "time_limit_s": GENEROUS_S,
        "max_new_tokens": TEST_TOKENS,
    }
    service = PipelineService(tiny_settings, enhancer_options=options)
    try:
        with caplog.at_level(logging.WARNING, logger="bot.model.pipeline_service"):
            report = service.load()
        assert service.ready
        assert service.enhancer is None
        assert str(service.enhancer_problem) == "its answer to a test prompt was empty"
        assert report.enhancer == "off: its answer to a test prompt was empty"
        assert "prompt enhancer turned off: its answer to a test prompt was empty" in caplog.text
        result = service.generate(GenerationRequest(PROMPT, ImageSize(64, 64), 2, seed=3, enhance=True))
        assert result.prompt_used == PROMPT and result.images
        assert str(result.enhancement_note) == (
            "the prompt enhancer was turned off at start-up (its answer to a test prompt was empty)"
        )
    finally:
        service.close()


def test_the_tiny_models_noise_fails_the_self_test(loaded_service):
    # Random weights write bytes, not text: the shared test service starts with the enhancer off.
    assert loaded_service.ready and loaded_service.enhancer is None
    assert str(loaded_service.enhancer_problem) in (
        "its answer to a test prompt was not text",
        "its answer to a test prompt was empty",
    )


def test_enhancer_off_builds_nothing_and_says_so(tmp_path, hub_cache):
    settings = Settings.from_env(tiny_env(tmp_path, hub_cache, ENHANCER="off"))
    assert settings.enhancer is False
    service = PipelineService(settings)
    try:
        report = service.load(warm_up=False)
        assert service.enhancer is None and report.enhancer == "off" and service.enhancer_status == "off"
        result = service.generate(GenerationRequest(PROMPT, ImageSize(64, 64), 2, seed=3, enhance=True))
        assert result.prompt_used == PROMPT
        assert str(result.enhancement_note) == "the prompt enhancer is turned off on this bot"
        assert str(service.enhance(PROMPT, 1).note) == "the prompt enhancer is turned off on this bot"
    finally:
        service.close()


@pytest.mark.parametrize(("value", "expected"), [(None, True), ("on", True), ("OFF", False), ("off", False)])
def test_the_enhancer_setting(tmp_path, value, expected):
    env = {} if value is None else {"ENHANCER": value}
    assert Settings.from_env(env).enhancer is expected


def test_a_bad_enhancer_setting_says_what_is_allowed():
    with pytest.raises(ConfigError, match=r"ENHANCER='maybe' is not valid: one of on, off"):
        Settings.from_env({"ENHANCER": "maybe"})


@pytest.fixture
def rewriting_service(tiny_pipe, tiny_settings):
    """A service (no warm-up, so no self-test) whose enhancer stops where the tiny model wrote clean text."""
    seed, stop, text = clean_rewrite(make_enhancer(tiny_pipe))
    options = {"stop_token_ids": (stop,), "time_limit_s": GENEROUS_S, "max_new_tokens": TEST_TOKENS}
    service = PipelineService(tiny_settings, enhancer_options=options)
    service.load(warm_up=False)
    yield service, seed, text
    service.close()


def test_a_job_that_asks_for_it_is_drawn_from_the_rewrite_on_the_worker_thread(rewriting_service):
    service, seed, text = rewriting_service
    request = GenerationRequest(PROMPT, ImageSize(64, 64), 2, seed=seed, enhance=True)
    result = service.generate(request)
    assert result.enhanced and result.prompt_used == text and result.enhancement_note is None
    assert result.request.prompt == PROMPT
    # Drawn from the rewrite: the same pixels as a plain job with the rewritten prompt.
    plain = service.generate(GenerationRequest(text, ImageSize(64, 64), 2, seed=seed))
    assert result.images[0].tobytes() == plain.images[0].tobytes()
    assert service.enhance(PROMPT, seed).text == text
    # Without `enhance` the prompt is drawn as given.
    assert service.generate(GenerationRequest(PROMPT, ImageSize(64, 64), 2, seed=seed)).prompt_used == PROMPT


def test_a_rewrite_the_guild_would_refuse_is_not_used(rewriting_service):
    service, seed, text = rewriting_service
    seen = []

    def check(prompt: str) -> Text | None:
        seen.append(prompt)
        return Text("the enhanced prompt has a word blocked here")

    request = GenerationRequest(PROMPT, ImageSize(64, 64), 2, seed=seed, enhance=True)
    result = service.submit(request, prompt_check=check).result()
    assert seen == [text]
    assert result.prompt_used == PROMPT and result.enhancement_note == Text(
        "the enhanced prompt has a word blocked here"
    )


def test_both_prompts_are_kept_in_the_store_the_png_and_info(rewriting_service, tmp_path):
    service, seed, text = rewriting_service
    size = ImageSize(64, 64)
    # Another seed, whose rewrite is not used (the model runs out of tokens, or writes noise).
    other_seed = next(other for other in range(seed + 1, seed + 50) if service.enhance(PROMPT, other).note)
    fallback = service.enhance(PROMPT, other_seed)
    requests = [
        GenerationRequest(PROMPT, size, 2, seed=seed, enhance=True),
        GenerationRequest(PROMPT, size, 2, seed=other_seed, enhance=True),
    ]
    figures = asyncio.run(asyncio.wait_for(run_queue(service.settings, service, requests, tmp_path / "q"), 120))
    assert figures["delivered"] == 2, figures
    with JobStore(tmp_path / "q" / "data") as store:
        enhanced, kept = sorted(store.recent_for_user(1, 2), key=lambda record: record.seed != seed)
    assert enhanced.enhance and enhanced.prompt == PROMPT
    assert enhanced.enhanced_prompt == text and enhanced.enhancement_note is None
    assert kept.enhance and kept.enhanced_prompt is None and kept.enhancement_note == fallback.note

    parameters = read_parameters(Path(enhanced.output_files[0]))
    assert parameters.splitlines()[0] == text
    assert parameters.splitlines()[-1].endswith(f", Original prompt: {json.dumps(PROMPT)}")
    kept_parameters = read_parameters(Path(kept.output_files[0]))
    assert kept_parameters.splitlines()[0] == PROMPT and "Original prompt" not in kept_parameters

    embed = info_embed(enhanced, service.settings.model_id)
    fields = {field.name: field.value for field in embed.fields}
    assert embed.description == PROMPT and fields["Enhanced prompt (used)"] == text
    fields = {field.name: field.value for field in info_embed(kept, service.settings.model_id).fields}
    assert fields["Prompt enhancer"] == f"Not used: {fallback.note}."


# ----- the parameters text ------------------------------------------------------------------------

# How A1111 (and the tools that copied its parser) split the settings line into keys and values.
A1111_PARAMETER = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def test_the_parameters_text_reads_back_in_a1111s_parser():
    request = GenerationRequest('一只猫, "OPEN", a: b', ImageSize(1024, 1024), 8, seed=42, negative_prompt="blur")
    text = parameters_text(request, 42, "org/model", prompt_used="一只橘猫趴在窗台上, soft light")
    prompt, negative, settings = text.splitlines()
    assert prompt == "一只橘猫趴在窗台上, soft light" and negative == "Negative prompt: blur"
    values = {key: value for key, value in A1111_PARAMETER.findall(settings)}
    assert values["Seed"] == "42" and values["Model"] == "org/model"
    assert json.loads(values["Original prompt"]) == request.prompt
    # Without a rewrite, the contract's form, unchanged.
    assert parameters_text(request, 42, "org/model", prompt_used=request.prompt) == parameters_text(
        request, 42, "org/model"
    )
    assert "Original prompt" not in parameters_text(request, 42, "org/model")
