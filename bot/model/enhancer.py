"""The prompt enhancer: the pipeline's resident text encoder, given a language-model head, rewrites a prompt.

Z-Image's text encoder is the body of Qwen3-4B (a `Qwen3Model` whose output embedding is tied to its
input embedding). A `Qwen3ForCausalLM` whose `model` is that encoder and whose `lm_head.weight` is its
`embed_tokens.weight` is the complete chat model: it writes text with the weights already resident, at
no cost in parameters. The wrapper is built on the meta device, so nothing is allocated and nothing
is copied.

Everything here runs on the model service's single worker thread. A rewrite that fails, runs out of
time or tokens, comes back empty, too long, unreadable or as a refusal is not used: the caller keeps
the original prompt and gets the reason in `EnhancedPrompt.note`, a Text rendered later in the reader's
language.
"""

from __future__ import annotations

import inspect
import logging
import re
import time
import unicodedata
from dataclasses import dataclass
from typing import Any

import torch
from transformers import Qwen3ForCausalLM, StoppingCriteria, StoppingCriteriaList

from bot.generation import MAX_PROMPT_CHARS
from bot.translations import Text

log = logging.getLogger(__name__)

# Written for this bot in the spirit of the Z-Image authors' published prompt-enhancer template: keep
# what the user asked for, add what a detailed prompt for this model carries, change nothing else.
SYSTEM_PROMPT = (
    "You rewrite short image descriptions into detailed prompts for a text-to-image model.\n"
    "Rules:\n"
    "1. Keep the subject, the people, the objects, the numbers and the setting the user asked for; "
    "never replace or drop them and add no new main subject.\n"
    "2. Add what makes a good picture: composition and camera angle, lighting and time of day, "
    "colours, materials and textures, the style or medium (photograph, oil painting, 3D render...) "
    "and concrete visual details.\n"
    "3. Write in the same language as the user's description (Chinese stays Chinese, English stays "
    "English).\n"
    "4. Text that should appear in the picture, such as words in quotes, on a sign or a label, is "
    "copied exactly, character for character, inside double quotes.\n"
    "5. One paragraph of at most 120 words. No title, no explanation, no lists, no questions: "
    "answer with the prompt only."
)

# The self-test's prompt: short, ordinary, in English, with text to render.
SELF_TEST_PROMPT = 'a cat on a windowsill next to a sign that says "OPEN"'

# New tokens of one rewrite: the system prompt asks for at most 120 words, about 160 tokens.
MAX_NEW_TOKENS = 256
# New tokens of the self-test: about twenty words, enough to tell text from noise, at an eighth of a full rewrite.
SELF_TEST_NEW_TOKENS = 32
# Length of the static key/value cache on CUDA: prompts are padded to nothing, so every rewrite
# reuses one cache (and one compiled decode step) as long as the chat and the answer fit in it.
CACHE_TOKENS = 1024
# Wall-clock limit of one rewrite; a generation still running then stops and the prompt is kept.
TIME_LIMIT_S = 20.0
# The self-test's limit: on CUDA its call also compiles the decode step and records its CUDA graph (the
# decode step's shapes come from the static cache's length, never from the number of new tokens, so the
# short self-test compiles and records exactly what every later rewrite runs).
SELF_TEST_TIME_LIMIT_S = 900.0
# Qwen3's recommended sampling for non-thinking answers; the job's seed makes it repeatable.
SAMPLING = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20}

# Openings of an answer that declines instead of rewriting, in English and Chinese.
_REFUSAL = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry,|i can(no|'?)t|i cannot|i won'?t|i will not|i'?m unable|i am unable|"
    r"as an ai|i apologi[sz]e|unfortunately,? i|"
    r"抱歉|对不起|很抱歉|我不能|我无法|无法(满足|完成|提供|生成)|作为(一个)?(ai|人工智能))",
    re.IGNORECASE,
)
# Labels a model may put before its answer although it was told not to.
_LABEL = re.compile(r"^\s*(enhanced prompt|rewritten prompt|prompt|提示词|优化后的提示词)\s*[:：]\s*", re.IGNORECASE)
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL)
# Text in quotes in the user's prompt is text to draw: the rewrite must carry it unchanged.
_QUOTED = re.compile(r'"([^"]+)"|“([^”]+)”|「([^」]+)」|『([^』]+)』')


@dataclass(frozen=True)
class EnhancedPrompt:
    """One rewrite: the prompt to use, and why the original was kept (None when the rewrite is used)."""

    original: str
    text: str  # the enhanced prompt, or the original when `note` says why not
    note: Text | None = None
    seconds: float = 0.0
    raw: str = ""  # what the model wrote, for the log
    token_ids: tuple[int, ...] = ()  # the new tokens, up to the stop token

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def enhanced(self) -> bool:
        return self.note is None


class _Deadline(StoppingCriteria):
    """Stops generation once the wall-clock limit has passed (checked after every new token)."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds
        self.hit = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.Tensor:
        if time.monotonic() >= self.deadline:
            self.hit = True
        return torch.full((input_ids.shape[0],), self.hit, dtype=torch.bool, device=input_ids.device)


@dataclass(frozen=True)
class Generated:
    """What one generate call gave: the new token ids and how it ended."""

    token_ids: list[int]
    finished: bool  # ended with a stop token
    timed_out: bool  # stopped by the wall-clock limit
    seconds: float
    fast_path: bool  # static cache and compiled decode step


class PromptEnhancer:
    """Rewrites prompts with a causal-LM view of the resident Qwen3 text encoder (no new weights)."""

    def __init__(
        self,
        text_encoder: Any,  # transformers' Qwen3Model, as the pipeline loaded it
        tokenizer,
        *,
        max_new_tokens: int = MAX_NEW_TOKENS,
        time_limit_s: float = TIME_LIMIT_S,
        max_chars: int = MAX_PROMPT_CHARS,
        stop_token_ids: tuple[int, ...] = (),
        compile: bool = False,
        cache_tokens: int = CACHE_TOKENS,
        self_test_tokens: int = SELF_TEST_NEW_TOKENS,
    ) -> None:
        config = text_encoder.config
        if not getattr(config, "tie_word_embeddings", False):
            raise ValueError("the text encoder's word embeddings are not tied: it has no language-model head to share")
        # The wrapper's own modules are made on the meta device (no memory, no initialisation), then
        # its body and head are replaced by the resident encoder and its embedding matrix.
        with torch.device("meta"):
            model = Qwen3ForCausalLM(config)
        model.model = text_encoder
        model.lm_head.weight = text_encoder.embed_tokens.weight
        model.eval()
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.time_limit_s = time_limit_s
        self.max_chars = max_chars
        self.cache_tokens = cache_tokens
        self.self_test_tokens = self_test_tokens
        self.self_test_generated: Generated | None = None  # what the last self-test wrote, for the log and tests
        stops = {tokenizer.convert_tokens_to_ids(token) for token in ("<|im_end|>", "<|endoftext|>")}
        stops |= {tokenizer.eos_token_id, *stop_token_ids}
        self.stop_token_ids = tuple(sorted(token for token in stops if isinstance(token, int) and token >= 0))
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_token_ids[0]
        self.device = text_encoder.embed_tokens.weight.device
        # The fast path: a static key/value cache reused by every call and transformers' compiled
        # decode step (CUDA graphs), so a token costs about one read of the weights instead of a few
        # hundred kernel launches from Python. CUDA only; anything that fails there turns it off.
        self.fast = compile and self.device.type == "cuda"
        self.fast_error: str | None = None
        self.static_cache: Any = None  # made by the first fast call, then reused (reset) by every later one

    # ----- the chat --------------------------------------------------------------------------

    def chat_text(self, prompt: str) -> str:
        """The rendered chat: the system prompt, the user's prompt and the assistant's turn with thinking off."""
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
        )

    def input_ids(self, prompt: str) -> torch.Tensor:
        ids = self.tokenizer(self.chat_text(prompt), add_special_tokens=False, return_tensors="pt").input_ids
        return ids.to(self.device)

    # ----- rewriting -------------------------------------------------------------------------

    def enhance(self, prompt: str, seed: int, *, time_limit_s: float | None = None) -> EnhancedPrompt:
        """Rewrite `prompt`; on any problem keep it and say why. Deterministic for a given seed."""
        started = time.perf_counter()
        try:
            input_ids = self.input_ids(prompt)
            if input_ids.shape[1] + self.max_new_tokens > self.cache_tokens:
                return self._kept(prompt, Text("the prompt is too long to enhance"), started)
            generated = self.generate(input_ids, seed=seed, time_limit_s=time_limit_s)
        except torch.OutOfMemoryError:
            raise  # the service frees memory and reports it like any out-of-memory job
        except Exception as error:
            log.warning("prompt enhancement failed (%s: %s); keeping the original prompt", type(error).__name__, error)
            return self._kept(prompt, failed(error), started)
        raw = self.tokenizer.decode(generated.token_ids, skip_special_tokens=True)
        seconds = time.perf_counter() - started
        note = self._problem(generated, time_limit_s or self.time_limit_s)
        text = clean_answer(raw)
        if note is None:
            note = check_answer(text, self.max_chars, original=prompt)
        if note is not None:
            log.info("enhanced prompt not used (%s): %r", note, raw[:200])
            return EnhancedPrompt(prompt, prompt, note, seconds, raw, tuple(generated.token_ids))
        return EnhancedPrompt(prompt, text, None, seconds, raw, tuple(generated.token_ids))

    def self_test(self) -> Text | None:
        """Start a rewrite of a fixed prompt; the reason the enhancer must not be used, or None when it writes text.

        Only the first `SELF_TEST_NEW_TOKENS` tokens are written (whether the answer ended or not): enough to
        judge the text, and on CUDA to compile the decode step and record its CUDA graph in the static cache
        every rewrite reuses. A compiled path that writes no text is not trusted either: plain generation
        gets the same test."""
        problem = self._self_test_once()
        if problem is not None and self.fast:
            self.fast = False
            self.fast_error = f"self-test on the compiled path: {problem}"
            self.static_cache = None
            log.warning("the enhancer's compiled decoding failed its self-test (%s); trying plain generation", problem)
            problem = self._self_test_once()
        return problem

    def _self_test_once(self) -> Text | None:
        self.self_test_generated = None
        try:
            input_ids = self.input_ids(SELF_TEST_PROMPT)
            generated = self.generate(
                input_ids,
                seed=0,
                max_new_tokens=min(self.self_test_tokens, self.max_new_tokens),
                time_limit_s=SELF_TEST_TIME_LIMIT_S,
            )
        except torch.OutOfMemoryError:
            raise
        except Exception as error:
            log.warning("the enhancer's self-test failed (%s: %s)", type(error).__name__, error)
            return failed(error)
        self.self_test_generated = generated
        raw = self.tokenizer.decode(generated.token_ids, skip_special_tokens=True)
        answer = clean_answer(raw)
        if not generated.finished:
            # Cut off mid-answer, the last token may hold only part of a character's bytes.
            answer = answer.rstrip("\ufffd")
        log.info(
            "enhancer self-test: %d new tokens in %.1f s (%s decoding): %r",
            len(generated.token_ids),
            generated.seconds,
            "compiled" if generated.fast_path else "plain",
            raw[:200],
        )
        if not answer:
            return Text("its answer to a test prompt was empty")
        if not is_text(answer):
            return Text("its answer to a test prompt was not text")
        return None

    def generate(
        self,
        input_ids: torch.Tensor,
        *,
        seed: int,
        max_new_tokens: int | None = None,
        min_new_tokens: int = 0,
        time_limit_s: float | None = None,
    ) -> Generated:
        """The new tokens after `input_ids`, sampled with `seed`, within the token and time limits."""
        limits = (max_new_tokens or self.max_new_tokens, min_new_tokens, time_limit_s or self.time_limit_s)
        if self.fast:
            try:
                return self._generate(input_ids, seed, *limits, fast=True)
            except torch.OutOfMemoryError:
                raise
            except Exception as error:
                # Compilation and CUDA graphs depend on the torch and transformers versions: a
                # failure costs speed, never the rewrite.
                self.fast = False
                self.fast_error = f"{type(error).__name__}: {error}"
                self.static_cache = None
                log.warning("the enhancer's compiled decoding failed; using plain generation (%s)", self.fast_error)
        return self._generate(input_ids, seed, *limits, fast=False)

    def _generate(
        self, input_ids, seed: int, max_new_tokens: int, min_new_tokens: int, time_limit_s: float, *, fast: bool
    ) -> Generated:
        deadline = _Deadline(time_limit_s)
        kwargs: dict = dict(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            eos_token_id=list(self.stop_token_ids),
            pad_token_id=self.pad_token_id,
            stopping_criteria=StoppingCriteriaList([deadline]),
            **SAMPLING,
        )
        devices = [self.device] if self.device.type == "cuda" else []
        started = time.perf_counter()
        # A private RNG state: the same seed gives the same rewrite, and the caller's RNG is untouched.
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            if fast:
                from transformers import CompileConfig

                # Inside inference mode: the cache's tensors are inference tensors, reset in place.
                kwargs[self._cache_argument()] = self._reset_cache()
                kwargs["compile_config"] = CompileConfig(fullgraph=True, mode="reduce-overhead")
            torch.manual_seed(seed)
            output = self.model.generate(**kwargs)
        new = output[0, input_ids.shape[1] :].tolist()
        seconds = time.perf_counter() - started
        # generate pads finished sequences after the stop token; keep what comes before it.
        finished = False
        for index, token in enumerate(new):
            if token in self.stop_token_ids:
                new, finished = new[:index], True
                break
        return Generated(new, finished, deadline.hit and not finished, seconds, fast)

    def _cache_argument(self) -> str:
        # transformers renamed the model's `past_key_values` argument to `cache` during 5.x.
        parameters = inspect.signature(self.model.forward).parameters
        return "cache" if "cache" in parameters else "past_key_values"

    def _reset_cache(self):
        """One static cache for every call: its tensors keep their addresses, which CUDA graphs need."""
        from transformers import StaticCache

        if self.static_cache is None:
            self.static_cache = StaticCache(config=self.model.config, max_cache_len=self.cache_tokens)
        else:
            self.static_cache.reset()
        return self.static_cache

    def _problem(self, generated: Generated, time_limit_s: float) -> Text | None:
        if generated.timed_out:
            return Text("the enhancer took longer than {seconds} s", seconds=f"{time_limit_s:g}")
        if not generated.finished:
            return Text("the enhancer did not finish within {tokens} tokens", tokens=self.max_new_tokens)
        return None

    def _kept(self, prompt: str, note: Text, started: float) -> EnhancedPrompt:
        return EnhancedPrompt(prompt, prompt, note, time.perf_counter() - started)

    # ----- accounting --------------------------------------------------------------------------

    def parameter_storage(self) -> set[int]:
        """Addresses of the storage behind every parameter of the wrapper (the encoder's, shared)."""
        return {parameter.untyped_storage().data_ptr() for parameter in self.model.parameters()}


def parameter_bytes(module: torch.nn.Module) -> int:
    """Bytes of distinct parameter storage: shared (tied) tensors count once."""
    seen: dict[int, int] = {}
    for parameter in module.parameters():
        storage = parameter.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def clean_answer(raw: str) -> str:
    """The prompt in a model's answer: no think block, no label, no wrapping quotes, one paragraph."""
    text = _THINK.sub("", raw).replace("<think>", "").replace("</think>", "").strip()
    text = _LABEL.sub("", text).strip()
    # Quotes around the whole answer are the model's, not the user's: inner quotes are kept.
    for left, right in (('"', '"'), ("“", "”"), ("「", "」")):
        if len(text) >= 2 and text.startswith(left) and text.endswith(right) and left not in text[1:-1]:
            text = text[1:-1].strip()
    return " ".join(text.split())


def is_text(text: str) -> bool:
    """Readable text: no undecodable bytes or control characters, and mostly letters, digits and spaces."""
    if not text or "\ufffd" in text:
        return False
    if any(unicodedata.category(char) in ("Cc", "Cs", "Co", "Cn") for char in text):
        return False
    wordy = sum(char.isalnum() or char.isspace() for char in text)
    return wordy >= 0.6 * len(text)


def quoted_text(prompt: str) -> list[str]:
    """The pieces of a prompt in double quotes (ASCII, curly or CJK): text the picture should show."""
    return [next(group for group in match.groups() if group) for match in _QUOTED.finditer(prompt)]


def check_answer(text: str, max_chars: int = MAX_PROMPT_CHARS, *, original: str = "") -> Text | None:
    """Why a cleaned answer cannot be used as a prompt for `original`, or None when it can."""
    if not text:
        return Text("the enhancer returned nothing")
    if len(text) > max_chars:
        return Text(
            "the enhanced prompt was too long ({length} characters, at most {most})", length=len(text), most=max_chars
        )
    if not is_text(text):
        return Text("the enhancer's answer was not readable text")
    if _REFUSAL.search(text):
        return Text("the enhancer declined to rewrite this prompt")
    for piece in quoted_text(original):
        if piece not in text:
            return Text('the enhanced prompt did not keep the text to draw ("{text}")', text=piece)
    return None


def failed(error: BaseException) -> Text:
    """The note of a rewrite that raised: the error's type only (its message is for the log)."""
    return Text("the enhancer failed ({error})", error=type(error).__name__)
