"""Word error rate with Whisper's English text normaliser; rates are fractions (0.05 = 5%).

`normalize` is OpenAI Whisper's English normaliser (the `whisper-normalizer` package: spelling
map, numbers, punctuation); `word_error_rate` scores normalised text with jiwer, which is how
Distil-Whisper and the Open ASR leaderboard report WER.

Hallucination metrics (Distil-Whisper's paper, Table 8), all on normalised text:
- insertion / substitution / deletion error rates: jiwer's alignment counts over the number of
  reference words (the three add up to the WER); insertions are words the model made up;
- `repeated_ngram_count` (the paper's 5-Dup with n = 5): repeated n-grams *within* each
  prediction, summed over predictions (repeats across different utterances are not looping).
"""

from __future__ import annotations

import collections
import functools
import math


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


def label_wer(ground_truth, label: str) -> float:
    """WER of one label against its ground truth (a fraction); NaN without a usable ground truth
    (not a string, or nothing left after normalising), so that no threshold ever passes it."""
    if not isinstance(ground_truth, str):
        return math.nan
    return word_error_rate([ground_truth], [label])


def percent(value) -> str:
    """A fraction as a percentage with one decimal; undefined values as n/a."""
    return "n/a" if value is None or value != value else f"{100 * value:.1f}%"


def json_safe(value):
    """NaN and infinities (undefined rates) as null, so that the value is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


def repeated_ngram_count(predictions: list[str], n: int = 5, normalized: bool = True) -> int:
    """The 5-Dup hallucination count: for each prediction, its word n-grams that are repeats of an
    earlier n-gram of the same prediction (occurrences minus distinct n-grams), summed.

    "a b c d e a b c d e" has six 5-grams of which five distinct: 1. A word said nine times in a
    row has five identical 5-grams: 4. Text is normalised first (case and punctuation ignored).
    """
    total = 0
    for prediction in predictions:
        words = (normalize(prediction) if normalized else prediction).split()
        grams = collections.Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
        total += sum(grams.values()) - len(grams)
    return total


def error_counts(references: list[str], predictions: list[str], normalized: bool = True) -> dict:
    """jiwer's word alignment counts: substitutions, deletions, insertions, hits and
    reference_words, over the pairs whose (normalised) reference is not empty."""
    import jiwer

    if normalized:
        references = [normalize(r) for r in references]
        predictions = [normalize(p) for p in predictions]
    pairs = [(r, p) for r, p in zip(references, predictions, strict=True) if r.strip()]
    counts = dict(substitutions=0, deletions=0, insertions=0, hits=0, reference_words=0)
    if pairs:
        out = jiwer.process_words([r for r, _ in pairs], [p for _, p in pairs])
        counts.update(
            substitutions=out.substitutions,
            deletions=out.deletions,
            insertions=out.insertions,
            hits=out.hits,
        )
        counts["reference_words"] = out.substitutions + out.deletions + out.hits
    return counts


def transcript_metrics(references: list[str], predictions: list[str]) -> dict:
    """WER (normalised and orthographic), its insertion / substitution / deletion parts and the
    repeated 5-gram count, as fractions (not percent) and counts."""
    counts = error_counts(references, predictions)
    words = counts["reference_words"]

    def rate(count):
        return count / words if words else float("nan")

    return {
        "wer": word_error_rate(references, predictions),
        "wer_orthographic": word_error_rate(references, predictions, normalized=False),
        "insertion_error_rate": rate(counts["insertions"]),
        "substitution_error_rate": rate(counts["substitutions"]),
        "deletion_error_rate": rate(counts["deletions"]),
        "repeated_5gram_count": repeated_ngram_count(predictions, 5),
        "reference_words": words,
        "insertions": counts["insertions"],
        "substitutions": counts["substitutions"],
        "deletions": counts["deletions"],
    }
