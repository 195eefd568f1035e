"""Word error rate with Whisper's English text normaliser.

`normalize` is OpenAI Whisper's English normaliser (the `whisper-normalizer` package: spelling
map, numbers, punctuation); `word_error_rate` scores normalised text with jiwer, which is how
Distil-Whisper and the Open ASR leaderboard report WER.
"""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def _english_normalizer():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


def normalize(text: str) -> str:
    return _english_normalizer()(text)


def word_error_rate(references: list[str], predictions: list[str], normalized: bool = True):
    """Corpus WER (errors over reference words); normalised unless asked otherwise.

    Pairs whose normalised reference is empty are skipped, as WER is undefined for them.
    """
    import jiwer

    if normalized:
        references = [normalize(r) for r in references]
        predictions = [normalize(p) for p in predictions]
    pairs = [(r, p) for r, p in zip(references, predictions, strict=True) if r.strip()]
    if not pairs:
        return float("nan")
    return jiwer.wer([r for r, _ in pairs], [p for _, p in pairs])
