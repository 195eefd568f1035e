"""Model FLOPs counted by hand, multiply-add by multiply-add, for a tiny Whisper (2 FLOPs each).

The encoder: conv1 (kernel 3, mels -> d) on every log-mel frame, conv2 (kernel 3, d -> d,
stride 2) on every encoder position, then per layer the q, k, v and output projections, the
attention scores and the mixing of values, and the two feed-forward matrices. The decoder, per
layer, for L tokens: self-attention as in the encoder over L positions, cross-attention (query
and output projections over L tokens, key and value projections over every encoder position,
scores and mixing of L tokens against every encoder position), the feed-forward; then the
vocabulary projection of every token.
"""

import dataclasses

import pytest

from flax_distil.train.flops import decoder_flops, encoder_flops, train_step_flops
from flax_distil.whisper import WhisperConfig

MELS, D, SOURCE, VOCAB = 4, 8, 6, 11  # 12 log-mel frames: two per encoder position
STUDENT = WhisperConfig(
    vocab_size=VOCAB,
    num_mel_bins=MELS,
    d_model=D,
    encoder_layers=2,
    encoder_attention_heads=2,
    encoder_ffn_dim=16,
    decoder_layers=1,
    decoder_attention_heads=2,
    decoder_ffn_dim=24,
    max_source_positions=SOURCE,
)
TEACHER = dataclasses.replace(STUDENT, decoder_layers=3, decoder_ffn_dim=32)
LENGTH = 5


def encoder_multiply_adds(ffn=16, layers=2):
    frames = 2 * SOURCE
    conv1 = frames * D * (3 * MELS)  # each frame, each output channel: 3 frames x MELS inputs
    conv2 = SOURCE * D * (3 * D)  # each position, each output channel: 3 frames x D inputs
    layer = (
        SOURCE * D * D  # q_proj
        + SOURCE * D * D  # k_proj
        + SOURCE * D * D  # v_proj
        + SOURCE * SOURCE * D  # scores: every query against every key, over all heads
        + SOURCE * SOURCE * D  # mixing: the weights times the values
        + SOURCE * D * D  # out_proj
        + SOURCE * D * ffn  # fc1
        + SOURCE * ffn * D  # fc2
    )
    return conv1 + conv2 + layers * layer


def decoder_multiply_adds(length, ffn, layers):
    layer = (
        length * D * D  # self-attention q_proj
        + length * D * D  # k_proj
        + length * D * D  # v_proj
        + length * length * D  # scores (all L x L: masked entries are computed too)
        + length * length * D  # mixing
        + length * D * D  # out_proj
        + length * D * D  # cross-attention q_proj
        + SOURCE * D * D  # cross-attention k_proj, over the encoder output
        + SOURCE * D * D  # cross-attention v_proj, over the encoder output
        + length * SOURCE * D  # cross-attention scores
        + length * SOURCE * D  # cross-attention mixing
        + length * D * D  # cross-attention out_proj
        + length * D * ffn  # fc1
        + length * ffn * D  # fc2
    )
    return layers * layer + length * D * VOCAB  # the projection onto the vocabulary


def test_encoder_flops_by_hand():
    assert encoder_multiply_adds() == 1152 + 1152 + 2 * (4 * 384 + 2 * 288 + 2 * 768)
    assert encoder_flops(STUDENT) == 2 * encoder_multiply_adds()
    wider = dataclasses.replace(STUDENT, encoder_ffn_dim=40, encoder_layers=3)
    assert encoder_flops(wider) == 2 * encoder_multiply_adds(ffn=40, layers=3)


@pytest.mark.parametrize("length", [1, LENGTH, 16])
def test_decoder_flops_by_hand(length):
    assert decoder_flops(STUDENT, length) == 2 * decoder_multiply_adds(length, 24, 1)
    assert decoder_flops(TEACHER, length) == 2 * decoder_multiply_adds(length, 32, 3)


def test_train_step_composition():
    encoder = 2 * encoder_multiply_adds()
    student = 2 * decoder_multiply_adds(LENGTH, 24, 1)
    teacher = 2 * decoder_multiply_adds(LENGTH, 32, 3)
    batch = 3

    def step(**options):
        return train_step_flops(STUDENT, TEACHER, batch, LENGTH, **options)

    # the frozen encoder once, the student decoder forward and backward (3x its forward), the
    # teacher decoder forward for the KL term
    assert step() == batch * (encoder + 3 * student + teacher)
    assert step(kl=False) == batch * (encoder + 3 * student)  # no teacher without KL
    assert step(encoder=False) == batch * (3 * student + teacher)  # encoder outputs cached
    assert step(kl=False, encoder=False) == batch * 3 * student
    # a trained encoder adds its backward (2x forward); a teacher with its own encoder runs it
    assert step(train_encoder=True) == batch * (3 * encoder + 3 * student + teacher)
    teacher_encoder = 2 * encoder_multiply_adds()  # the same encoder shapes here
    assert step(teacher_encoder=True) == batch * (encoder + 3 * student + teacher + teacher_encoder)
    assert step(kl=False, teacher_encoder=True) == batch * (encoder + 3 * student)
