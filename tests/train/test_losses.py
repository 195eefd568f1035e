"""The distillation losses against a hand computation in numpy (float64) on a tiny batch."""

import numpy as np
import pytest

from flax_distil.train.losses import cross_entropy_sum, distillation_sums, kl_sum

B, T, V = 2, 3, 5
MASK = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]], np.float32)  # (0, 2) is padding


def tiny_example(seed=0):
    rng = np.random.default_rng(seed)
    student = (2 * rng.standard_normal((B, T, V))).astype(np.float32)
    teacher = (2 * rng.standard_normal((B, T, V))).astype(np.float32)
    labels = rng.integers(0, V, (B, T)).astype(np.int32)
    return student, teacher, labels


def log_softmax(row):
    row = np.asarray(row, np.float64)
    shifted = row - row.max()
    return shifted - np.log(np.exp(shifted).sum())


def hand_ce(student, labels, mask):
    return -sum(
        log_softmax(student[b, t])[labels[b, t]] for b in range(B) for t in range(T) if mask[b, t]
    )


def hand_kl(teacher, student, mask, temperature):
    """sum over unmasked positions of sum_v p_v (log p_v - log q_v), p and q softened by T."""
    total = 0.0
    for b in range(B):
        for t in range(T):
            if mask[b, t]:
                log_p = log_softmax(teacher[b, t] / temperature)
                log_q = log_softmax(student[b, t] / temperature)
                total += (np.exp(log_p) * (log_p - log_q)).sum()
    return total


def sums(student, teacher, labels, **weights):
    result = distillation_sums(student, teacher, labels, MASK, **weights)
    return {name: float(value) for name, value in result.items()}


@pytest.mark.parametrize("temperature", [2.0, 1.5])  # shared exponentials, and not
def test_distillation_sums_match_a_hand_computation(temperature):
    student, teacher, labels = tiny_example()
    ce_weight, kl_weight = 0.8, 0.5
    ce = hand_ce(student, labels, MASK)
    kl = hand_kl(teacher, student, MASK, temperature)
    assert ce > 0 and kl > 0
    result = sums(
        student, teacher, labels, ce_weight=ce_weight, kl_weight=kl_weight, temperature=temperature
    )
    assert result["ce"] == pytest.approx(ce, rel=1e-5)
    assert result["kl"] == pytest.approx(kl, rel=1e-5)
    objective = ce_weight * ce + kl_weight * temperature**2 * kl
    assert result["objective"] == pytest.approx(objective, rel=1e-5)
    assert float(cross_entropy_sum(student, labels, MASK)) == pytest.approx(ce, rel=1e-5)
    assert float(kl_sum(teacher, student, MASK, temperature)) == pytest.approx(kl, rel=1e-5)


def test_masked_positions_do_not_count():
    student, teacher, labels = tiny_example()
    weights = {"ce_weight": 0.8, "kl_weight": 0.5, "temperature": 2.0}
    before = sums(student, teacher, labels, **weights)
    # Only the padded position changes, to logits that would dominate every sum if counted.
    student[0, 2], teacher[0, 2] = 20.0 * np.arange(V), -20.0 * np.arange(V)
    labels[0, 2] = 0
    assert sums(student, teacher, labels, **weights) == pytest.approx(before, rel=1e-6)


def test_kl_of_identical_logits_is_zero():
    student, _, labels = tiny_example()
    result = sums(student, student.copy(), labels, ce_weight=0.8, kl_weight=1.0, temperature=2.0)
    assert result["kl"] == pytest.approx(0.0, abs=1e-5)
    assert result["objective"] == pytest.approx(0.8 * result["ce"], rel=1e-5)


def test_zero_kl_weight_gives_zero_kl_without_a_teacher():
    student, teacher, labels = tiny_example()
    ce = hand_ce(student, labels, MASK)
    for teacher_logits in (teacher, None):  # the step passes no teacher logits when kl_weight=0
        result = sums(student, teacher_logits, labels, ce_weight=0.8, kl_weight=0, temperature=2.0)
        assert result["kl"] == 0.0
        assert result["objective"] == pytest.approx(0.8 * ce, rel=1e-5)


@pytest.mark.parametrize("temperature", [2.0, 3.0, 1.5])
def test_fused_gradient_equals_the_plain_formulas(temperature):
    """The hand-written backward of the fused CE + KL equals autodiff through the plain
    log-softmax formulas, for the objective and for each sum (float32 round-off)."""
    import jax
    import jax.numpy as jnp

    student, teacher, labels = tiny_example(3)
    student, teacher = 4 * student, 4 * teacher  # peaked distributions too
    weights = {"ce_weight": 0.8, "kl_weight": 0.5, "temperature": temperature}

    def plain(logits, part):
        ce = cross_entropy_sum(logits, labels, MASK)
        kl = kl_sum(teacher, logits, MASK, weights["temperature"])
        objective = weights["ce_weight"] * ce + weights["kl_weight"] * temperature**2 * kl
        return {"objective": objective, "ce": ce, "kl": kl}[part]

    def fused(logits, part):
        return distillation_sums(logits, teacher, labels, MASK, **weights)[part]

    for part in ("objective", "ce", "kl"):
        expected = jax.grad(plain)(jnp.asarray(student), part)
        got = jax.grad(fused)(jnp.asarray(student), part)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=part)
        assert np.abs(np.asarray(expected)).max() > 1e-2  # a gradient worth comparing
    np.testing.assert_array_equal(np.asarray(jax.grad(fused)(jnp.asarray(student), "ce"))[0, 2], 0)
