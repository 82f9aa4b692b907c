"""Every checker accepts a correct answer and rejects plausible wrong ones with the right diagnosis."""

import math

import pytest
import torch

from helpers import checks


def _causal(n):
    return torch.ones(n, n, dtype=torch.bool).tril()


# ---- Exercise 0.1 -------------------------------------------------------------------------------
def pattern_reference(x, W_Q, W_K):
    scores = (x @ W_Q) @ (x @ W_K).transpose(-1, -2) / math.sqrt(W_Q.shape[-1])
    return scores.masked_fill(~_causal(x.shape[1]), float("-inf")).softmax(-1)


def pattern_no_mask(x, W_Q, W_K):
    return ((x @ W_Q) @ (x @ W_K).transpose(-1, -2) / math.sqrt(W_Q.shape[-1])).softmax(-1)


def pattern_wrong_axis(x, W_Q, W_K):
    scores = (x @ W_Q) @ (x @ W_K).transpose(-1, -2) / math.sqrt(W_Q.shape[-1])
    return scores.masked_fill(~_causal(x.shape[1]), float("-inf")).softmax(-2)


def pattern_no_scale(x, W_Q, W_K):
    scores = (x @ W_Q) @ (x @ W_K).transpose(-1, -2)
    return scores.masked_fill(~_causal(x.shape[1]), float("-inf")).softmax(-1)


def pattern_scaled_by_d_head(x, W_Q, W_K):
    scores = (x @ W_Q) @ (x @ W_K).transpose(-1, -2) / W_Q.shape[-1]
    return scores.masked_fill(~_causal(x.shape[1]), float("-inf")).softmax(-1)


def pattern_mask_after_softmax(x, W_Q, W_K):
    return pattern_no_mask(x, W_Q, W_K) * _causal(x.shape[1])


def pattern_scores_only(x, W_Q, W_K):
    return (x @ W_Q) @ (x @ W_K).transpose(-1, -2)


def pattern_wrong_shape(x, W_Q, W_K):
    return pattern_reference(x, W_Q, W_K)[0]


def test_attention_pattern_accepts_reference(capsys):
    checks.check_attention_pattern(pattern_reference)
    assert "✔ Exercise 0.1" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (pattern_no_mask, "no causal mask"),
        (pattern_wrong_axis, "softmax runs over query positions"),
        (pattern_no_scale, "1/sqrt(d_head) scale is missing"),
        (pattern_scaled_by_d_head, "divided by d_head instead of sqrt(d_head)"),
        (pattern_mask_after_softmax, "mask is applied after the softmax"),
        (pattern_scores_only, "matches none of the common mistakes"),
        (pattern_wrong_shape, "returned shape (7, 7); expected (2, 7, 7)"),
    ],
)
def test_attention_pattern_rejects(wrong, diagnosis):
    with pytest.raises(checks.CheckFailed) as info:
        checks.check_attention_pattern(wrong)
    assert diagnosis in str(info.value)


# ---- Exercise 0.2 -------------------------------------------------------------------------------
def head_reference(pattern, x, W_V, W_O):
    return pattern @ (x @ W_V) @ W_O


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda p, x, W_V, W_O: p.transpose(-1, -2) @ x @ W_V @ W_O, "pattern is transposed"),
        (lambda p, x, W_V, W_O: p @ x @ (W_V @ W_O).T, "OV matrix is transposed"),
        (lambda p, x, W_V, W_O: x @ W_V @ W_O, "pattern is not applied"),
        (lambda p, x, W_V, W_O: p @ x @ W_V, "returned shape (2, 7, 4); expected (2, 7, 12)"),
        (
            lambda p, x, W_V, W_O: (p @ x @ W_V @ W_O).tolist(),
            "must return a torch.Tensor, got list",
        ),
    ],
)
def test_head_output_rejects(wrong, diagnosis):
    with pytest.raises(checks.CheckFailed) as info:
        checks.check_head_output(wrong)
    assert diagnosis in str(info.value)


def test_head_output_accepts_reference(capsys):
    checks.check_head_output(head_reference)
    assert "✔ Exercise 0.2" in capsys.readouterr().out


# ---- Exercise 0.3 -------------------------------------------------------------------------------
def direct_reference(model, tokens):
    x0 = model.W_E[tokens]
    if model.cfg.positional_embedding_type == "standard":
        x0 = x0 + model.W_pos[: tokens.shape[-1]]
    return x0 @ model.W_U


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (
            lambda m, t: (m.W_E[t] + m.W_pos[: t.shape[-1]]) @ m.W_U,
            "shortformer model the positional embedding never enters",
        ),
        (lambda m, t: m.W_E[t] @ m.W_U, "the positional part is missing"),
        (lambda m, t: m(t), "model's full logits"),
    ],
)
def test_direct_path_rejects(wrong, diagnosis):
    with pytest.raises(checks.CheckFailed) as info:
        checks.check_direct_path_logits(wrong)
    assert diagnosis in str(info.value)


def test_direct_path_accepts_reference():
    checks.check_direct_path_logits(direct_reference)


# ---- chapter 01 ---------------------------------------------------------------------------------
def counts_reference(tokens, d_vocab):
    pairs = tokens[:, :-1].flatten() * d_vocab + tokens[:, 1:].flatten()
    return torch.bincount(pairs, minlength=d_vocab**2).view(d_vocab, d_vocab)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda t, V: counts_reference(t, V).T, "rows and columns are swapped"),
        (lambda t, V: counts_reference(t.flatten()[None], V), "flattened before pairing"),
        (lambda t, V: counts_reference(t[:1], V), "only the first sequence"),
        (
            lambda t, V: counts_reference(t, V).float() / counts_reference(t, V).sum(),
            "expected integer counts",
        ),
        (lambda t, V: counts_reference(t, V)[1:, 1:], "returned shape (5, 5); expected (6, 6)"),
    ],
)
def test_count_bigrams_rejects(wrong, diagnosis):
    with pytest.raises(checks.CheckFailed) as info:
        checks.check_count_bigrams(wrong)
    assert diagnosis in str(info.value)


def test_count_bigrams_accepts_reference():
    checks.check_count_bigrams(counts_reference)


def log_probs_reference(counts):
    c = counts.double()
    return (c / c.sum(-1, keepdim=True)).log()


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda c: (c.double() / c.double().sum(0, keepdim=True)).log(), "each column sums to 1"),
        (lambda c: (c.double() / c.sum()).log(), "log P(current, next), the joint"),
        (
            lambda c: c.double() / c.double().sum(-1, keepdim=True),
            "probabilities, not log-probabilities",
        ),
        (lambda c: c.double().log(), "log counts, not normalised"),
        (lambda c: (c / c.sum(-1, keepdim=True)).log()[None], "returned shape (1, 6, 6)"),
    ],
)
def test_empirical_log_probs_rejects(wrong, diagnosis):
    with pytest.raises(checks.CheckFailed) as info:
        checks.check_empirical_log_probs(wrong)
    assert diagnosis in str(info.value)


def test_empirical_log_probs_accepts_reference_in_float32_too():
    checks.check_empirical_log_probs(log_probs_reference)
    checks.check_empirical_log_probs(lambda c: log_probs_reference(c).float())


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda m: (m.W_E @ m.W_U).T, "the matrix is transposed"),
        (lambda m: (m.W_E @ m.W_U).softmax(-1), "these are probabilities"),
        (lambda m: (m.W_E @ m.W_U).log_softmax(-1), "these are log-probabilities"),
        (lambda m: m.W_U.T @ m.W_E.T + 1, "matches none of the common mistakes"),
    ],
)
def test_zero_layer_circuit_rejects(wrong, diagnosis):
    with pytest.raises(checks.CheckFailed) as info:
        checks.check_zero_layer_circuit(wrong)
    assert diagnosis in str(info.value)


def test_zero_layer_circuit_accepts_reference():
    checks.check_zero_layer_circuit(lambda m: m.W_E @ m.W_U)


# ---- shared behaviour ---------------------------------------------------------------------------
def test_an_unfinished_stub_raises_not_implemented_unchanged():
    def stub(*args):
        raise NotImplementedError("Exercise 0.1: your code here")

    with pytest.raises(checks.ExerciseNotDone, match="your code here") as info:
        checks.check_attention_pattern(stub)
    assert isinstance(info.value, NotImplementedError)
    assert "runs anyway" in "\n".join(info.value._render_traceback_())


def test_nan_output_is_named():
    with pytest.raises(checks.CheckFailed, match="NaN"):
        checks.check_zero_layer_circuit(lambda m: torch.full((9, 9), float("nan")))


def test_failure_renders_as_a_short_diagnosis_in_ipython():
    err = checks.CheckFailed("Exercise 9.9", "line one\nline two")
    assert err._render_traceback_() == ["✘ Exercise 9.9 is not right yet.", "line one", "line two"]


# ---- chapter 02 ---------------------------------------------------------------------------------
from helpers import circuits  # noqa: E402


def test_full_ov_circuit_accepts_reference():
    checks.check_full_ov_circuit(lambda m, h: m.W_E @ m.W_V[0, h] @ m.W_O[0, h] @ m.W_U)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda m, h: (m.W_E @ m.W_V[0, h] @ m.W_O[0, h] @ m.W_U).T, "circuit is transposed"),
        (lambda m, h: m.W_E @ m.W_O[0, h].T @ m.W_V[0, h].T @ m.W_U, "W_O is applied before W_V"),
        (lambda m, h: m.W_E @ m.W_V[0, 0] @ m.W_O[0, 0] @ m.W_U, "this is head 0's circuit"),
        (lambda m, h: m.W_V[0, h] @ m.W_O[0, h], "returned shape (16, 16); expected (10, 10)"),
    ],
)
def test_full_ov_circuit_rejects(wrong, diagnosis):
    with pytest.raises(checks.CheckFailed) as info:
        checks.check_full_ov_circuit(wrong)
    assert diagnosis in str(info.value)


def _qk(m, h):
    return (m.W_E @ m.W_Q[0, h]) @ (m.W_E @ m.W_K[0, h]).T / m.cfg.d_head**0.5


def test_full_qk_circuit_accepts_reference():
    checks.check_full_qk_circuit(lambda m, h: _qk(m, h) - _qk(m, h).mean(-1, keepdim=True))


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_qk, "each query's row must have its mean subtracted"),
        (lambda m, h: _qk(m, h) - _qk(m, h).mean(0, keepdim=True), "subtracted over queries"),
        (lambda m, h: (_qk(m, h) - _qk(m, h).mean(-1, keepdim=True)).T, "matrix is transposed"),
        (lambda m, h: (_qk(m, h) - _qk(m, h).mean(-1, keepdim=True)) * 2, "scale is missing"),
    ],
)
def test_full_qk_circuit_rejects(wrong, diagnosis):
    with pytest.raises(checks.CheckFailed) as info:
        checks.check_full_qk_circuit(wrong)
    assert diagnosis in str(info.value)


def _eig(m, h):
    return torch.linalg.eigvals((m.W_O[0, h] @ m.W_U @ m.W_E @ m.W_V[0, h]).detach().double())


def test_copying_score_accepts_reference():
    checks.check_copying_score(lambda m, h: float(_eig(m, h).sum().real / _eig(m, h).abs().sum()))
    checks.check_copying_score(lambda m, h: _eig(m, h).sum().real / _eig(m, h).abs().sum())


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda m, h: float(_eig(m, h).abs().sum() / _eig(m, h).abs().sum()), "exactly ±1"),
        (lambda m, h: float(_eig(m, h).sum().real / _eig(m, h).sum().abs()), "not |Σλ|"),
        (
            lambda m, h: float(_eig(m, h).sum().real / _eig(m, h).real.abs().sum()),
            "only the real parts",
        ),
        (
            lambda m, h: float(
                torch.linalg.eigvals((m.W_V[0, h] @ m.W_O[0, h]).detach().double()).real.mean()
            ),
            "expected",
        ),
        (lambda m, h: "high", "must return a float, got str"),
        (lambda m, h: _eig(m, h).real, "must return one number"),
    ],
)
def test_copying_score_rejects(wrong, diagnosis):
    with pytest.raises(checks.CheckFailed) as info:
        checks.check_copying_score(wrong)
    assert diagnosis in str(info.value)


def _trigrams(qk_axis=0, ov_axis=1, largest=True):
    def fn(m, h, s, k):
        qk, ov = circuits.full_qk_circuit(m, 0, h), circuits.full_ov_circuit(m, 0, h)
        dest_scores = qk[:, s] if qk_axis == 0 else qk[s]
        out_scores = ov[s] if ov_axis == 1 else ov[:, s]
        return (dest_scores.topk(k).indices.tolist(),
                out_scores.topk(k, largest=largest).indices.tolist())  # fmt: skip

    return fn


def test_skip_trigrams_accepts_reference():
    checks.check_skip_trigrams(_trigrams())


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_trigrams(qk_axis=1), "read from the source's row of the QK circuit"),
        (_trigrams(ov_axis=0), "read from the source's column of the OV circuit"),
        (_trigrams(largest=False), "pushed down most"),
        (lambda m, h, s, k: [1, 2, 3], "must return a pair"),
    ],
)
def test_skip_trigrams_rejects(wrong, diagnosis):
    with pytest.raises(checks.CheckFailed) as info:
        checks.check_skip_trigrams(wrong)
    assert diagnosis in str(info.value)


def _effect(sign=1.0, word="bay", use_probs=False):
    from helpers.evals import continuation_effect

    def fn(model, language, n, seed):
        e = continuation_effect(model, language, "in", word, n_contexts=n, seed=seed + 7)
        return sign * (e.mean_p_with - e.mean_p_without if use_probs else e.mean_change)

    return fn


def test_crossed_effect_accepts_a_reference_with_other_random_contexts():
    checks.check_crossed_effect(_effect())


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_effect(sign=-1.0), "the sign is flipped"),
        (_effect(use_probs=True), "change in probability"),
        (_effect(word="mind"), "effect on 'mind'"),
        (lambda *a: 0.0 + 1.5, "the reference measures"),
        (lambda *a: [3.0], "must return a float"),
    ],
)
def test_crossed_effect_rejects(wrong, diagnosis):
    with pytest.raises(checks.CheckFailed) as info:
        checks.check_crossed_effect(wrong)
    assert diagnosis in str(info.value)


# ---- chapter 03 ---------------------------------------------------------------------------------
def _kcomp(m, qk_transposed=True, normalise=True, swap=False):
    a0, a1 = m.blocks[0].attn, m.blocks[1].attn
    OV = a0.W_V @ a0.W_O
    QK = a1.W_Q @ a1.W_K.transpose(-1, -2)
    other = QK.transpose(-1, -2) if qk_transposed else QK
    prod = (OV[:, None] @ other[None]).flatten(-2).norm(dim=-1)
    if normalise:
        prod = prod / (OV.flatten(-2).norm(dim=-1)[:, None] * QK.flatten(-2).norm(dim=-1)[None])
    return prod.T if swap else prod


def test_k_composition_accepts_reference():
    checks.check_k_composition_scores(_kcomp)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda m: _kcomp(m, qk_transposed=False), "these are Q-composition scores"),
        (lambda m: _kcomp(m, swap=True), "axes are swapped"),
        (lambda m: _kcomp(m, normalise=False), "not normalised"),
        (lambda m: circuits.composition_scores(m, "V"), "these are V-composition scores"),
        (lambda m: _kcomp(m)[0], "returned shape (3,); expected (3, 3)"),
    ],
)
def test_k_composition_rejects(wrong, diagnosis):
    with pytest.raises(checks.CheckFailed) as info:
        checks.check_k_composition_scores(wrong)
    assert diagnosis in str(info.value)


def _virtual(m, h0, h1):
    return m.W_E @ m.W_V[0, h0] @ m.W_O[0, h0] @ m.W_V[1, h1] @ m.W_O[1, h1] @ m.W_U


def test_virtual_head_accepts_reference():
    checks.check_virtual_head_ov(_virtual)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (
            lambda m, h0, h1: (
                m.W_E @ m.W_V[1, h1] @ m.W_O[1, h1] @ m.W_V[0, h0] @ m.W_O[0, h0] @ m.W_U
            ),
            "wrong order",
        ),
        (lambda m, h0, h1: _virtual(m, h0, h1).T, "circuit is transposed"),
        (lambda m, h0, h1: m.W_E @ m.W_V[0, h0] @ m.W_O[0, h0] @ m.W_U, "layer-1 head is missing"),
    ],
)
def test_virtual_head_rejects(wrong, diagnosis):
    with pytest.raises(checks.CheckFailed) as info:
        checks.check_virtual_head_ov(wrong)
    assert diagnosis in str(info.value)


# ---- chapter 04 ---------------------------------------------------------------------------------
def test_previous_token_score_accepts_reference():
    checks.check_previous_token_score(lambda p: p.diagonal(-1, -2, -1).mean())


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda p: p.diagonal(0, -2, -1).mean(), "main diagonal"),
        (lambda p: p.diagonal(1, -2, -1).mean(), "next position"),
        (lambda p: p.diagonal(-1, -2, -1).sum(), "sum was taken"),
        (lambda p: p.diagonal(-1, -2, -1).mean(-1), "must return a float"),
    ],
)
def test_previous_token_score_rejects(wrong, diagnosis):
    with pytest.raises(checks.CheckFailed) as info:
        checks.check_previous_token_score(wrong)
    assert diagnosis in str(info.value)


def _induction(shift=1, latest_only=False):
    def fn(pattern, length):
        n, per_query = pattern.shape[-1], []
        for q in range(1 + length, n):
            rs = [1] if latest_only else range(1, (q - 1) // length + 1)
            per_query.append(pattern[:, q, [q - r * length + shift for r in rs]].sum(-1))
        return float(torch.stack(per_query).mean())

    return fn


def test_induction_score_accepts_reference():
    checks.check_induction_score(_induction())


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_induction(shift=0), "duplicate-token score"),
        (_induction(shift=2), "one position too far"),
        (_induction(latest_only=True), "only the most recent earlier copy"),
        (lambda p, length: "0.5", "must return a float"),
    ],
)
def test_induction_score_rejects(wrong, diagnosis):
    with pytest.raises(checks.CheckFailed) as info:
        checks.check_induction_score(wrong)
    assert diagnosis in str(info.value)


def _handmade_parts():
    def prev(model, layout):
        n, V = layout.n_ctx, layout.d_vocab
        position = torch.arange(layout.position.start, layout.position.stop)
        a = model.blocks[0].attn
        a.W_Q[0, position, torch.arange(n)] = 50.0
        a.W_K[0, position[:-1], torch.arange(1, n)] = 50.0
        a.W_V[0, layout.token, :V] = torch.eye(V)
        a.W_O[0, :V, layout.previous] = torch.eye(V)

    def induction(model, layout, key=None, out=None, strength=50.0):
        V = layout.d_vocab
        a = model.blocks[1].attn
        a.W_Q[0, layout.token, :V] = strength * torch.eye(V)
        a.W_K[0, key or layout.previous, :V] = strength * torch.eye(V)
        a.W_V[0, layout.token, :V] = torch.eye(V)
        a.W_O[0, :V, out or layout.output] = torch.eye(V)

    return prev, induction


def test_handmade_accepts_reference():
    prev, induction = _handmade_parts()
    checks.check_handmade_induction(prev, induction)
    checks.check_handmade_induction(lambda m, lay: None, checks.reference_handmade_weights)


@pytest.mark.parametrize(
    "variant, diagnosis",
    [
        ("no previous head", "Layer 0 puts only"),
        ("keys read the token", "Layer 1 puts only"),
        ("writes to the token subspace", "check its OV"),
        ("weak scores", "needs <= 0.25"),
    ],
)
def test_handmade_rejects(variant, diagnosis):
    prev, induction = _handmade_parts()
    if variant == "no previous head":
        args = (lambda m, lay: None, induction)
    elif variant == "keys read the token":
        args = (prev, lambda m, lay: induction(m, lay, key=lay.token))
    elif variant == "writes to the token subspace":
        args = (prev, lambda m, lay: induction(m, lay, out=lay.token))
    else:
        args = (prev, lambda m, lay: induction(m, lay, strength=0.5))
    with pytest.raises(checks.CheckFailed) as info:
        checks.check_handmade_induction(*args)
    assert diagnosis in str(info.value)


def _expansion(transpose=False, weighted=True, direct=True, heads=True):
    def fn(model, tokens, pattern):
        out = model.W_E[tokens] @ model.W_U if direct else 0
        for h in range(model.cfg.n_heads):
            rows = circuits.full_ov_circuit(model, 0, h)[tokens]
            A = pattern[:, h].transpose(-1, -2) if transpose else pattern[:, h]
            if heads:
                out = out + (A @ rows if weighted else rows)
        return out

    return fn


def test_path_expansion_accepts_reference():
    checks.check_path_expansion(_expansion())


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_expansion(heads=False), "direct path's logits alone"),
        (_expansion(direct=False), "missing the direct path"),
        (_expansion(transpose=True), "pattern is transposed"),
        (_expansion(weighted=False), "weighted by its attention"),
        (lambda m, t, p: m(t)[:, :-1], "returned shape (3, 5, 10); expected (3, 6, 10)"),
    ],
)
def test_path_expansion_rejects(wrong, diagnosis):
    with pytest.raises(checks.CheckFailed) as info:
        checks.check_path_expansion(wrong)
    assert diagnosis in str(info.value)
