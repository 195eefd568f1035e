"""Whisper tokenizer loading, timestamp tokens, special ids and the decoder prompt.

Wraps `transformers.WhisperTokenizer` (the tokenizers-backed one; no PyTorch needed). Some
converted models ship a `tokenizer.json` without the 1,501 timestamp tokens `<|0.00|>` ...
`<|30.00|>`; `add_timestamp_tokens` restores them at their canonical ids, right after
`<|notimestamps|>`.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

from flax_distil.errors import FlaxDistilError

NUM_TIMESTAMPS = 1501  # 0.00 s ... 30.00 s in 0.02 s steps
SECONDS_PER_TIMESTAMP = 0.02
# Whisper's decoder has 448 positions; OpenAI's decoding samples at most half of them.
DEFAULT_MAX_NEW_TOKENS = 224
_LANGUAGE_TOKEN = re.compile(r"^<\|([a-z]{2,3})\|>$")


def timestamp_token(index: int) -> str:
    return f"<|{index * 0.02:.2f}|>"


def load_tokenizer(path: str | os.PathLike):
    """Loads a Whisper tokenizer from a directory or a `tokenizer.json` file."""
    from transformers import WhisperTokenizer

    path = Path(path)
    try:
        if path.is_dir():
            tokenizer = WhisperTokenizer.from_pretrained(str(path))
        else:
            tokenizer = WhisperTokenizer(tokenizer_file=str(path))
    except Exception as error:  # transformers raises many types for unreadable files
        raise FlaxDistilError(f"{path}: cannot load a Whisper tokenizer ({error})") from error
    add_timestamp_tokens(tokenizer)
    return tokenizer


def add_timestamp_tokens(tokenizer) -> None:
    """Adds `<|0.00|>` ... `<|30.00|>` if missing, so that they follow `<|notimestamps|>`."""
    from tokenizers import AddedToken

    first = tokenizer.convert_tokens_to_ids(timestamp_token(0))
    expected = tokenizer.convert_tokens_to_ids("<|notimestamps|>") + 1
    if first == expected:
        return
    if first not in (None, tokenizer.unk_token_id) or len(tokenizer) != expected:
        raise FlaxDistilError(
            f"tokenizer has {len(tokenizer)} tokens and <|0.00|> at {first}; cannot place the "
            f"timestamp tokens at {expected}"
        )
    tokenizer.add_tokens(
        [
            AddedToken(timestamp_token(i), lstrip=False, rstrip=False, normalized=False)
            for i in range(NUM_TIMESTAMPS)
        ]
    )


@dataclasses.dataclass(frozen=True)
class SpecialTokens:
    """Ids of Whisper's control tokens for one tokenizer."""

    start_of_transcript: int
    end_of_text: int
    transcribe: int
    translate: int
    start_of_prev: int
    no_speech: int
    no_timestamps: int
    timestamp_begin: int
    languages: dict[str, int]  # "en" -> id of <|en|>

    @classmethod
    def of(cls, tokenizer) -> SpecialTokens:
        ids = tokenizer.convert_tokens_to_ids
        no_speech = ids("<|nospeech|>")
        if no_speech in (None, tokenizer.unk_token_id):
            no_speech = ids("<|nocaptions|>")  # the name in older vocabularies
        languages = {}
        for token, token_id in tokenizer.get_added_vocab().items():
            match = _LANGUAGE_TOKEN.match(token)
            if match:
                languages[match.group(1)] = token_id
        return cls(
            start_of_transcript=ids("<|startoftranscript|>"),
            end_of_text=ids("<|endoftext|>"),
            transcribe=ids("<|transcribe|>"),
            translate=ids("<|translate|>"),
            start_of_prev=ids("<|startofprev|>"),
            no_speech=no_speech,
            no_timestamps=ids("<|notimestamps|>"),
            timestamp_begin=ids(timestamp_token(0)),
            languages=dict(sorted(languages.items(), key=lambda item: item[1])),
        )


def decoder_prompt(
    tokenizer,
    *,
    multilingual: bool,
    language: str | None = None,
    task: str = "transcribe",
    timestamps: bool = False,
) -> list[int]:
    """The forced decoder prefix: <|startoftranscript|> [<|lang|> <|task|>] [<|notimestamps|>]."""
    special = SpecialTokens.of(tokenizer)
    prompt = [special.start_of_transcript]
    if multilingual:
        language = (language or "en").lower()
        if language not in special.languages:
            raise FlaxDistilError(
                f"unknown language {language!r}; use a code such as "
                f"{', '.join(list(special.languages)[:5])}"
            )
        if task not in ("transcribe", "translate"):
            raise FlaxDistilError(f"unknown task {task!r}; use 'transcribe' or 'translate'")
        prompt += [special.languages[language], getattr(special, task)]
    elif language not in (None, "en") or task != "transcribe":
        raise FlaxDistilError(
            "this is an English-only model: it only transcribes English (drop --language/--task)"
        )
    if not timestamps:
        prompt.append(special.no_timestamps)
    return prompt


def default_generation_config(
    config,
    tokenizer,
    *,
    suppress_tokens: list[int],
    begin_suppress_tokens: list[int],
    alignment_heads: list[list[int]] | None = None,
) -> dict:
    """A Hugging Face `generation_config.json` dict for a Whisper model and its tokenizer."""
    special = SpecialTokens.of(tokenizer)
    generation = {
        "bos_token_id": config.bos_token_id,
        "decoder_start_token_id": config.decoder_start_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "max_length": config.max_target_positions,
        "suppress_tokens": list(suppress_tokens),
        "begin_suppress_tokens": list(begin_suppress_tokens),
        "no_timestamps_token_id": special.no_timestamps,
        "prev_sot_token_id": special.start_of_prev,
        "max_initial_timestamp_index": 50,
        "return_timestamps": False,
        "is_multilingual": config.is_multilingual,
    }
    if alignment_heads:
        generation["alignment_heads"] = [list(head) for head in alignment_heads]
    if config.is_multilingual:
        generation["lang_to_id"] = {f"<|{code}|>": i for code, i in special.languages.items()}
        generation["task_to_id"] = {
            "transcribe": special.transcribe,
            "translate": special.translate,
        }
    return generation
