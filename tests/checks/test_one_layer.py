"""Checkers of chapter 02."""

import pytest
import torch

from helpers import attribution, checks, circuits, evals, handmade, recipes
from helpers.circuits import one_layer
from tests.checks.conftest import assert_accepts, assert_rejects


# ---- 2.1 the full OV circuit ----------------------------------------------------------------------
def ov_reference(m, h):
    return m.W_E @ m.W_V[0, h] @ m.W_O[0, h] @ m.W_U


def test_full_ov_circuit_accepts_reference():
    assert_accepts(checks.check_full_ov_circuit, ov_reference)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda m, h: ov_reference(m, h).T, "circuit is transposed"),
        (lambda m, h: m.W_E @ m.W_O[0, h].T @ m.W_V[0, h].T @ m.W_U, "W_O is applied before W_V"),
        (lambda m, h: m.W_E @ m.W_V[0, h] @ m.W_O[0, h] @ m.W_E.T, "W_Eᵀ instead of W_U"),
        (lambda m, h: ov_reference(m, (h + 1) % 2), "another head's circuit"),
        (lambda m, h: m.W_V[0, h] @ m.W_O[0, h], "returned shape"),
        (lambda m, h: circuits.full_ov_circuit(m, 0, h), "which this exercise withholds"),
        (lambda m, h: ov_reference(m, h) * 2, "matches none"),
        (lambda m, h: ov_reference(m, h) + m.W_E @ m.W_U, "the direct path W_E @ W_U was added"),
        (lambda m, h: ov_reference(m, 0), "matches none"),  # head 0 whatever the head asked for
        (lambda m, h: m.W_E @ m.W_V[0, h] @ m.W_O[0, h], "writes into the residual stream"),
        (lambda m, h: m.W_V[0, h] @ m.W_O[0, h] @ m.W_U, "start from the tokens' embeddings"),
        (lambda m, h: m.W_V[0, h] @ m.W_O[0, h], "W_V W_O alone"),
    ],
)
def test_full_ov_circuit_rejects(wrong, diagnosis):
    assert_rejects(checks.check_full_ov_circuit, wrong, diagnosis=diagnosis)


# ---- 2.3 the path expansion, by hand ----------------------------------------------------------------
def _expansion(transpose=False, weighted=True, direct=True, heads=True, head_axis=1,
               heads_summed=True, n_heads=None):  # fmt: skip
    def fn(model, tokens, pattern):
        out = model.W_E[tokens] @ model.W_U if direct else 0
        terms = []
        for h in range(n_heads or model.cfg.n_heads):
            rows = circuits.full_ov_circuit(model, 0, h)[tokens]
            A = pattern[:, h] if head_axis == 1 else pattern[h]
            A = A.transpose(-1, -2) if transpose else A
            if heads:
                terms.append(A @ rows if weighted else rows)
        if not heads_summed:
            return torch.stack(terms, 1)
        return out + sum(terms)

    return fn


def test_path_expansion_accepts_reference():
    assert_accepts(checks.check_path_expansion, _expansion())


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_expansion(heads=False), "direct path's logits alone"),
        (_expansion(direct=False), "missing the direct path"),
        (_expansion(transpose=True), "pattern is transposed"),
        (_expansion(weighted=False), "weighted by its attention"),
        (lambda m, t, p: m(t), "forward pass"),
        (lambda m, t, p: m.run_with_cache(t)[0], "forward pass"),
        (lambda m, t, p: sum(attribution.one_layer_path_expansion(m, t)), "withholds"),
        (lambda m, t, p: _expansion()(m, t, p)[:, :-1], "returned shape"),
        (
            lambda m, t, p: _expansion()(m, t, p) + m.W_pos[: t.shape[1]] @ m.W_U,
            "the positions' W_pos @ W_U was added",
        ),
        (_expansion(head_axis=0), "pattern[head] picks a sequence, not a head"),
        (_expansion(heads_summed=False), "one term per head: sum the heads' terms"),
        # sizes of the notebook's model: four heads, positions all n_ctx long
        (_expansion(n_heads=4), "head must be an int in 0.."),  # the course's helper says so
        (
            lambda m, t, p: _expansion()(m, t, p) + m.W_pos @ m.W_U,
            "its sequences are shorter than n_ctx",
        ),
    ],
)
def test_path_expansion_rejects(wrong, diagnosis):
    assert_rejects(checks.check_path_expansion, wrong, diagnosis=diagnosis)


def test_path_expansion_accepts_an_einsum():
    def einsum(m, t, p):
        ov = torch.stack([circuits.full_ov_circuit(m, 0, h) for h in range(m.cfg.n_heads)])
        return m.W_E[t] @ m.W_U + torch.einsum("bhqk,hbkv->bqv", p, ov[:, t])

    assert_accepts(checks.check_path_expansion, einsum)


# ---- 2.4 the copying score ------------------------------------------------------------------------
def _eig(M):
    return torch.linalg.eigvals(M.detach().double())


def _score(eig):
    return float(eig.sum().real / eig.abs().sum())


def _small(m, h):
    return m.W_O[0, h] @ m.W_U @ m.W_E @ m.W_V[0, h]


def test_copying_score_accepts_reference_and_other_right_forms():
    assert_accepts(checks.check_copying_score, lambda m, h: _score(_eig(_small(m, h))))
    # a 0-d tensor, a numpy scalar, and the full d_vocab x d_vocab circuit are right too
    assert_accepts(
        checks.check_copying_score,
        lambda m, h: (lambda e: e.sum().real / e.abs().sum())(_eig(_small(m, h))),
    )
    assert_accepts(
        checks.check_copying_score, lambda m, h: torch.tensor(_score(_eig(_small(m, h)))).numpy()
    )
    assert_accepts(
        checks.check_copying_score,
        lambda m, h: _score(_eig(m.W_E @ m.W_V[0, h] @ m.W_O[0, h] @ m.W_U)),
    )


def test_copying_score_accepts_float64_throughout_whatever_the_draw():
    # the checker's spectra were once so ill-conditioned that float32 rounding of the weights
    # alone moved the score past the tolerance: computed in float64 from the start (more exact
    # than the reference) the score was refused for seeds 6 and 19
    def in_float64(m, h):
        W_E, W_U = m.W_E.detach().double(), m.W_U.detach().double()
        W_V, W_O = m.W_V[0, h].detach().double(), m.W_O[0, h].detach().double()
        return _score(torch.linalg.eigvals(W_E @ W_V @ W_O @ W_U))

    assert_accepts(checks.check_copying_score, in_float64, seeds=(6, 19, 22, 24))


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (
            lambda m, h: float(_eig(_small(m, h)).abs().sum() / _eig(_small(m, h)).abs().sum()),
            "exactly ±1",
        ),
        (
            lambda m, h: float(_eig(_small(m, h)).sum().abs() / _eig(_small(m, h)).abs().sum()),
            "keep the sign",
        ),
        (
            lambda m, h: float(_eig(_small(m, h)).sum().real / _eig(_small(m, h)).real.abs().sum()),
            "only the real parts",
        ),
        (
            lambda m, h: _score(_eig(m.W_U @ m.W_E @ (m.W_V[0, h] @ m.W_O[0, h]).T)),
            "OV part is transposed",
        ),
        (lambda m, h: _score(_eig(m.W_O[0, h] @ m.W_E.T @ m.W_E @ m.W_V[0, h])), "W_E.T was used"),
        (lambda m, h: _score(_eig(m.W_V[0, h] @ m.W_O[0, h])), "W_V @ W_O alone"),
        (
            lambda m, h: (lambda e: float(e.sum() / e.abs().sum()))(
                torch.linalg.eigvalsh(_small(m, h).detach().double())
            ),
            "eigvalsh assumes a symmetric matrix",
        ),
        (
            lambda m, h: float(
                _eig(_small(m, h)).sum().real
                / torch.linalg.svdvals(_small(m, h).detach().double()).sum()
            ),
            "the sum of the singular values",
        ),
        (lambda m, h: 0.5, "expected"),
        (lambda m, h: "high", "must return a float, got str"),
        (lambda m, h: _eig(_small(m, h)).real, "return one number"),
        (lambda m, h: circuits.copying_score(m, 0, h), "which this exercise withholds"),
        (lambda m, h: _score(circuits.ov_eigenvalues(m, 0, h)), "which this exercise withholds"),
    ],
)
def test_copying_score_rejects(wrong, diagnosis):
    assert_rejects(checks.check_copying_score, wrong, diagnosis=diagnosis)


# ---- 2.5 the full QK circuit ----------------------------------------------------------------------
def _qk(m, h):
    return (m.W_E @ m.W_Q[0, h]) @ (m.W_E @ m.W_K[0, h]).T / m.cfg.d_head**0.5


def test_full_qk_circuit_accepts_reference():
    assert_accepts(
        checks.check_full_qk_circuit, lambda m, h: _qk(m, h) - _qk(m, h).mean(-1, keepdim=True)
    )


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_qk, "each query's row must have its mean subtracted"),
        (
            lambda m, h: _qk(m, h) - _qk(m, h).mean(0, keepdim=True),
            "subtracted over the queries (down each column, dim 0): each row is one query",
        ),
        (lambda m, h: (_qk(m, h) - _qk(m, h).mean(-1, keepdim=True)).T, "matrix is transposed"),
        (
            lambda m, h: (_qk(m, h) - _qk(m, h).mean(-1, keepdim=True)) * m.cfg.d_head**0.5,
            "scale is missing",
        ),
        (
            lambda m, h: (_qk(m, h) - _qk(m, h).mean(-1, keepdim=True)) / m.cfg.d_head**0.5,
            "instead of sqrt",
        ),
        (lambda m, h: circuits.full_qk_circuit(m, 0, h), "which this exercise withholds"),
        (lambda m, h: _qk(m, h) - _qk(m, h).mean(), "the mean of the whole matrix was subtracted"),
        (
            lambda m, h: (lambda s: s - s.mean(-1, keepdim=True))(_qk(m, h).T),
            "queries and keys are swapped",
        ),
        (
            lambda m, h: (lambda s: s - s.mean(-1, keepdim=True))(
                _qk(m, h) * (m.cfg.d_head / (m.cfg.d_model // m.cfg.n_heads)) ** 0.5
            ),
            "d_head was taken as d_model // n_heads",
        ),
        (  # the notebook's d_head, 16, built in
            lambda m, h: (lambda s: s - s.mean(-1, keepdim=True))(
                _qk(m, h) * m.cfg.d_head**0.5 / 4
            ),
            "matches none",
        ),
        (lambda m, h: m.W_Q[0, h] @ m.W_K[0, h].T, "that is W_Q W_Kᵀ alone"),
        (
            lambda m, h: circuits.attention_score_terms(
                m, h, torch.arange(m.cfg.d_vocab)[None, : m.cfg.n_ctx]
            )["token-token"],
            "calls the course's `circuits.attention_score_terms`",
        ),
    ],
)
def test_full_qk_circuit_rejects(wrong, diagnosis):
    assert_rejects(checks.check_full_qk_circuit, wrong, diagnosis=diagnosis)


# ---- 2.7 skip-trigrams of a source ----------------------------------------------------------------
def _trigrams(qk_axis=0, ov_axis=1, largest=True, centred=True, head=None):
    def fn(m, h, s, k):
        h = h if head is None else head(h)
        qk = circuits.full_qk_circuit(m, 0, h, normalise=centred)
        ov = circuits.full_ov_circuit(m, 0, h)
        dest_scores = qk[:, s] if qk_axis == 0 else qk[s]
        out_scores = ov[s] if ov_axis == 1 else ov[:, s]
        return (dest_scores.topk(k).indices.tolist(),
                out_scores.topk(k, largest=largest).indices.tolist())  # fmt: skip

    return fn


def test_skip_trigrams_accepts_reference_as_lists_or_tensors():
    assert_accepts(checks.check_skip_trigrams, _trigrams())
    assert_accepts(
        checks.check_skip_trigrams,
        lambda m, h, s, k: tuple(torch.tensor(x) for x in _trigrams()(m, h, s, k)),
    )
    # in any order: sets, and the argsort's ascending order
    assert_accepts(
        checks.check_skip_trigrams,
        lambda m, h, s, k: tuple(set(x) for x in _trigrams()(m, h, s, k)),
    )
    assert_accepts(
        checks.check_skip_trigrams,
        lambda m, h, s, k: (
            circuits.full_qk_circuit(m, 0, h)[:, s].argsort()[-k:],
            circuits.full_ov_circuit(m, 0, h)[s].argsort()[-k:],
        ),
    )


def _padded(m, h, s, k):
    dests, outs = _trigrams()(m, h, s, 3)
    return (dests + dests)[:k], (outs + outs)[:k]  # always the top 3, padded with repeats


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_trigrams(qk_axis=1), "read from the source's row of the QK circuit"),
        (_trigrams(ov_axis=0), "read from the source's column of the OV circuit"),
        (_trigrams(largest=False), "pushed down most"),
        (lambda m, h, s, k: [1, 2, 3], "must return a pair"),
        (lambda m, h, s, k: _trigrams()(m, h, s, 3), "must hold k = 2 token ids"),
        (_padded, "holds a token more than once"),
        (lambda m, h, s, k: circuits.skip_trigrams(m, 0, h, s, k), "which this exercise withholds"),
        (lambda m, h, s, k: _trigrams()(m, h, s, k)[::-1], "destinations and outputs are swapped"),
        (_trigrams(head=lambda h: 1 - h), "the other head's reading"),
        (_trigrams(centred=False), "before each query's row was centred"),
        (lambda m, h, s, k: torch.tensor(_trigrams()(m, h, s, k)), "must return a pair"),
    ],
)
def test_skip_trigrams_rejects(wrong, diagnosis):
    assert_rejects(checks.check_skip_trigrams, wrong, diagnosis=diagnosis)


# ---- 2.9 quantify the bug -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def skip_model():
    ckpt = recipes.load("skip_trigrams_1l")
    return ckpt.model, ckpt.language


def effect_reference(model, contexts, where, source, dest, output, *, sign=1.0, probs=False,
                     position=-1, bos=True, log_softmax=True, rows="each", dest_last=True,
                     mean=True):  # fmt: skip
    n = contexts.shape[0]
    with_source = contexts.clone()
    if rows == "each":
        with_source[torch.arange(n), where] = source
    elif rows == "all":  # [:, where]: every position of `where` in every context
        with_source[:, where] = source
    else:  # the first context's position in every context
        with_source[:, int(where[0])] = source
    values = []
    for ctx in (with_source, contexts):
        parts = ([torch.zeros(n, 1, dtype=torch.long)] if bos else []) + [ctx]
        parts += [torch.full((n, 1), dest)] if dest_last else []
        with torch.no_grad():
            logits = model(torch.cat(parts, 1))[:, position]
        lp = logits.log_softmax(-1)[:, output] if log_softmax else logits[:, output]
        values.append(lp.exp() if probs else lp)
    change = values[0] - values[1]
    return sign * float(change.mean() if mean else change.sum())


def _source_early(model, contexts, where, source, dest, output):
    n = contexts.shape[0]
    bos, end = torch.zeros(n, 1, dtype=torch.long), torch.full((n, 1), dest)
    without = torch.cat([bos, contexts, end], 1)
    with_source = without.clone()
    with_source[torch.arange(n), where] = source  # where indexes the contexts, not the sequence
    with torch.no_grad():
        lp = [model(t)[:, -1].log_softmax(-1)[:, output] for t in (with_source, without)]
    return float((lp[0] - lp[1]).mean())


def test_crossed_effect_accepts_reference(skip_model):
    assert_accepts(checks.check_crossed_effect, effect_reference, *skip_model)


def _variant(**kwargs):
    return lambda *args: effect_reference(*args, **kwargs)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_variant(sign=-1.0), "the sign is flipped"),
        (_variant(probs=True), "change in probability"),
        (_variant(position=-2), "one position too early"),
        (_variant(bos=False), "expected"),  # near the right value on this model: no diagnosis
        (_variant(log_softmax=False), "change of the raw logit"),
        (_source_early, "one position early"),
        (lambda *a: 3.09, "expected"),  # the notebook's number, hard-coded
        (lambda *a: [3.0], "must return a float"),
        (
            lambda m, c, w, s, d, o: evals.skip_trigram_effect(m, c, w, s, d, o).mean_change,
            "withholds",
        ),
        (_variant(rows="all"), "wrote the source at every position of `where`"),
        (_variant(rows="first"), "at the same position, where[0], in every context"),
        (_variant(mean=False), "summed over the contexts"),
        (_variant(dest_last=False), "or without `dest` appended"),
    ],
)
def test_crossed_effect_rejects(wrong, diagnosis, skip_model):
    assert_rejects(checks.check_crossed_effect, wrong, *skip_model, diagnosis=diagnosis)


def test_crossed_effect_draws_a_random_rule_whose_effect_is_measurable(skip_model):
    """At seed 179 (of 200 draws) the random triple moved its output by 3e-6 nats on the
    notebook's model: a right answer computed another way was refused for rounding."""
    exercise = checks.EXERCISES["2.9"]
    for seed in (179, *range(0, 40, 3)):
        random_rule_cases = exercise.cases(seed, *skip_model)[2:]
        assert all(abs(case.expected) >= 1e-3 for case in random_rule_cases), seed


def test_crossed_effect_names_the_call_it_needs():
    with pytest.raises(TypeError, match=r"check_crossed_effect\(crossed_effect, model, language\)"):
        checks.check_crossed_effect(effect_reference, "model", "language")


def _aliased(model, contexts, where, source, dest, output):
    with_source = contexts  # not a copy: the "without" version gets the source too
    with_source[torch.arange(contexts.shape[0]), where] = source
    return effect_reference(model, contexts, where, source, dest, output)


def _wrong_destination(skip_language):
    at = skip_language.token_to_id["at"]
    return lambda m, c, w, s, d, o: effect_reference(m, c, w, s, at, o)  # ignores `dest`


def test_crossed_effect_runs_the_model_it_is_given(skip_model):
    notebook_model, language = skip_model

    def on_the_notebooks_model(m, c, w, s, d, o):  # the notebook's global, not the argument
        return effect_reference(notebook_model, c, w, s, d, o)

    assert_rejects(checks.check_crossed_effect, on_the_notebooks_model, *skip_model,
                   diagnosis="a random model of its vocabulary")  # fmt: skip


def test_crossed_effect_diagnoses_a_missing_clone(skip_model):
    model, language = skip_model
    assert_rejects(checks.check_crossed_effect, _aliased, model, language, diagnosis=".clone()")


def test_crossed_effect_diagnoses_only_what_it_is_sure_of(skip_model):
    model, language = skip_model
    for wrong in (_wrong_destination(language),):
        assert_rejects(checks.check_crossed_effect, wrong, model, language, diagnosis="expected")
        with checks.fixed_seed(0), pytest.raises(checks.CheckFailed) as info:
            checks.check_crossed_effect(wrong, model, language)
        assert "common mistake" not in str(info.value)


# ---- 2.2 the diagonal ---------------------------------------------------------------------------
def diag_reference(M, ignore):
    keep = [i for i in range(M.shape[0]) if i not in ignore]
    sub = M[keep][:, keep]
    return float((sub.argmax(-1) == torch.arange(len(keep))).float().mean())


def _diagonal(ignored_columns=None, ties_count=False, original_indices=False, strict=False):
    def fn(M, ignore):
        keep = [i for i in range(M.shape[0]) if i not in ignore]
        if ignored_columns is not None:  # masked rather than dropped
            masked = M.clone()
            masked[:, ignore] = ignored_columns
            return float((masked[keep].argmax(-1) == torch.tensor(keep)).float().mean())
        sub = M[keep][:, keep]
        if ties_count or strict:
            others = sub.clone().fill_diagonal_(float("-inf")).max(-1).values
            wins = sub.diagonal() >= others if ties_count else sub.diagonal() > others
            return float(wins.float().mean())
        target = torch.tensor(keep) if original_indices else torch.arange(len(keep))
        return float((sub.argmax(-1) == target).float().mean())

    return fn


def _diagonal_one_by_one(M, ignore):
    for i in ignore:  # each deletion shifts the indices after it
        M = torch.cat([M[:i], M[i + 1 :]])
        M = torch.cat([M[:, :i], M[:, i + 1 :]], 1)
    return float((M.argmax(-1) == torch.arange(len(M))).float().mean())


def _diagonal_isclose(M, ignore):
    keep = [i for i in range(M.shape[0]) if i not in ignore]
    sub = M[keep][:, keep]
    return float(torch.isclose(sub.diagonal(), sub.max(-1).values).float().mean())


def test_diagonal_top1_accepts_reference():
    assert_accepts(checks.check_diagonal_top1, diag_reference)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda M, ig: diag_reference(M.T, ig), "over each column"),
        (lambda M, ig: diag_reference(M, []), "were kept"),
        (
            lambda M, ig: float(
                (
                    M[[i for i in range(len(M)) if i not in ig]].argmax(-1)
                    == torch.tensor([i for i in range(len(M)) if i not in ig])
                )
                .float()
                .mean()
            ),
            "only the ignored rows",
        ),
        (lambda M, ig: circuits.diagonal_top1_accuracy(M, ig), "withholds"),
        (lambda M, ig: 1.0, "Exercise 2.2"),
        (lambda M, ig: diag_reference(M, [0]), "only BOS (index 0) was left out"),
        (
            lambda M, ig: diag_reference(M, ig) * (len(M) - len(set(ig))) / len(M),
            "divided by every row of the matrix",
        ),
        (_diagonal(ignored_columns=0.0), "the ignored columns were set to 0 rather than left out"),
        (_diagonal(ties_count=True), "a tie was counted as on the diagonal"),
        (_diagonal(original_indices=True), "compared with the original indices"),
        (_diagonal_one_by_one, "ignore=[9, 0, 5]"),  # rows deleted in turn shift the later indices
        (_diagonal_isclose, "ignore=[]: got"),  # entries far below 1 are all "close"
    ],
)
def test_diagonal_top1_rejects(wrong, diagnosis):
    assert_rejects(checks.check_diagonal_top1, wrong, diagnosis=diagnosis)


def test_diagonal_top1_accepts_other_right_answers():
    # ignored columns at -inf; the diagonal strictly above the rest of its row; numpy
    assert_accepts(checks.check_diagonal_top1, _diagonal(ignored_columns=float("-inf")))
    assert_accepts(checks.check_diagonal_top1, _diagonal(strict=True))
    assert_accepts(
        checks.check_diagonal_top1,
        lambda M, ig: diag_reference(torch.from_numpy(M.numpy()), list(ig)),
    )


# ---- 2.6 positional pattern -------------------------------------------------------------------------
def pos_reference(m, h, *, mask=True, scale=True, dim=-1, fill=float("-inf"), offset=0,
                  future=False, d_head=None):  # fmt: skip
    n = m.cfg.n_ctx
    s = (m.W_pos @ m.W_Q[0, h]) @ (m.W_pos @ m.W_K[0, h]).T
    s = s / (d_head(m.cfg) if d_head else m.cfg.d_head) ** 0.5 if scale else s
    if mask:
        may_attend = torch.ones(n, n, dtype=torch.bool)
        may_attend = may_attend.triu() if future else may_attend.tril(offset)
        s = s.masked_fill(~may_attend, fill)
    return s.softmax(dim)


def test_positional_pattern_accepts_reference():
    assert_accepts(checks.check_positional_pattern, pos_reference)


@pytest.mark.parametrize(
    "kwargs, diagnosis",
    [
        ({"mask": False}, "no causal mask"),
        ({"scale": False}, "scale is missing"),
        ({"dim": 0}, "query positions (dim=0)"),
        ({"fill": 0.0}, "the masked scores were set to 0, not -inf"),
        ({"offset": -1}, "the mask hid the diagonal too"),
        ({"future": True}, "attend to the later ones (triu)"),
        ({"d_head": lambda c: c.d_model // c.n_heads}, "d_head was taken as d_model // n_heads"),
    ],
)
def test_positional_pattern_rejects(kwargs, diagnosis):
    assert_rejects(
        checks.check_positional_pattern,
        lambda m, h: pos_reference(m, h, **kwargs),
        diagnosis=diagnosis,
    )


def test_positional_pattern_explains_a_pattern_of_tokens():
    assert_rejects(
        checks.check_positional_pattern,
        lambda m, h: ((m.W_E @ m.W_Q[0, h]) @ (m.W_E @ m.W_K[0, h]).T).softmax(-1),
        diagnosis="one row per token: these are token embeddings (W_E)",
    )


def test_positional_pattern_refuses_the_reference():
    assert_rejects(
        checks.check_positional_pattern,
        lambda m, h: circuits.positional_qk_circuit(m, 0, h).softmax(-1),
        diagnosis="withholds",
    )


# ---- 2.8 ranking skip-trigrams ----------------------------------------------------------------------
def top_reference(m, h, n, *, qk_rows=False, centre=True, clamp=True, bos=False):
    V = m.cfg.d_vocab
    qk = (m.W_E @ m.W_Q[0, h]) @ (m.W_E @ m.W_K[0, h]).T / m.cfg.d_head**0.5
    qk = qk - qk.mean(-1, keepdim=True)  # [dest, source]
    ov = m.W_E @ m.W_V[0, h] @ m.W_O[0, h] @ m.W_U
    ov = ov - ov.mean(-1, keepdim=True) if centre else ov
    a = qk if qk_rows else qk.T  # [source, dest]
    strength = (
        (a.clamp_min(0)[:, :, None] * ov.clamp_min(0)[:, None, :])
        if clamp
        else (a[:, :, None] * ov[:, None, :])
    )
    if not bos:
        strength[0] = strength[:, 0] = strength[:, :, 0] = float("-inf") if not clamp else 0.0
    idx = strength.flatten().topk(n).indices.tolist()
    return [(i // (V * V), i // V % V, i % V) for i in idx]


def test_top_skip_trigrams_accepts_reference():
    assert_accepts(checks.check_top_skip_trigrams, top_reference)
    as_tensor = lambda m, h, n: torch.tensor(top_reference(m, h, n)).reshape(-1, 3)  # noqa: E731
    assert_accepts(checks.check_top_skip_trigrams, as_tensor)
    assert_rejects(
        checks.check_top_skip_trigrams,
        lambda m, h, n: as_tensor(m, h, n).float(),
        diagnosis="must hold token ids",
    )


@pytest.mark.parametrize(
    "kwargs, diagnosis",
    [
        ({"qk_rows": True}, "QK circuit was read as [source, destination]"),
        ({"centre": False}, "OV rows were not centred"),
        ({"clamp": False}, "negative × negative"),
        ({"bos": True}, "BOS (token 0) took part"),
    ],
)
def test_top_skip_trigrams_rejects(kwargs, diagnosis):
    assert_rejects(
        checks.check_top_skip_trigrams,
        lambda m, h, n: top_reference(m, h, n, **kwargs),
        diagnosis=diagnosis,
    )


@pytest.mark.parametrize(
    "order, diagnosis",
    [
        (lambda s, d, o: (d, s, o), "the triples are (destination, source, output)"),
        (lambda s, d, o: (s, o, d), "the triples are (source, output, destination)"),
    ],
)
def test_top_skip_trigrams_names_triples_in_another_order(order, diagnosis):
    assert_rejects(
        checks.check_top_skip_trigrams,
        lambda m, h, n: [order(*t) for t in top_reference(m, h, n)],
        diagnosis=diagnosis,
    )


def _bos_zeroed_on(*axes):
    def fn(m, h, n):
        V = m.cfg.d_vocab
        qk = (m.W_E @ m.W_Q[0, h]) @ (m.W_E @ m.W_K[0, h]).T / m.cfg.d_head**0.5
        qk = qk - qk.mean(-1, keepdim=True)
        ov = m.W_E @ m.W_V[0, h] @ m.W_O[0, h] @ m.W_U
        ov = ov - ov.mean(-1, keepdim=True)
        strength = qk.T.clamp_min(0)[:, :, None] * ov.clamp_min(0)[:, None, :]
        for axis in axes:
            strength.select(axis, 0).zero_()
        idx = strength.flatten().topk(n).indices.tolist()
        return [(i // (V * V), i // V % V, i % V) for i in idx]

    return fn


@pytest.mark.parametrize("axes", [(0, 1), (0, 2), (1, 2)])
def test_top_skip_trigrams_names_bos_left_in_on_one_axis(axes):
    # BOS kept as an output only was once accepted for most draws: only BOS's embedding was made
    # large, which makes it a strong source or destination, not a strong output
    assert_accepts(checks.check_top_skip_trigrams, _bos_zeroed_on(0, 1, 2))
    assert_rejects(
        checks.check_top_skip_trigrams,
        _bos_zeroed_on(*axes),
        diagnosis="BOS (token 0) takes part in",
        seeds=range(8),
    )


def test_top_skip_trigrams_rejects_the_notebooks_vocabulary_size_built_in():
    def decoded_with_43(m, h, n):
        V = m.cfg.d_vocab
        flat = [s * V * V + d * V + o for s, d, o in top_reference(m, h, n)]
        return [(i // 43**2, i // 43 % 43, i % 43) for i in flat]

    assert_rejects(checks.check_top_skip_trigrams, decoded_with_43, diagnosis="Exercise 2.8")


def test_top_skip_trigrams_rejects_wrong_order_fixed_n_and_the_reference():
    assert_rejects(
        checks.check_top_skip_trigrams,
        lambda m, h, n: top_reference(m, h, n)[::-1],
        diagnosis="wrong order",
    )
    assert_rejects(
        checks.check_top_skip_trigrams, lambda m, h, n: top_reference(m, h, 3), diagnosis="n = 6"
    )
    assert_rejects(
        checks.check_top_skip_trigrams,
        lambda m, h, n: circuits.top_skip_trigrams(m, 0, h, n, [0]),
        diagnosis="withholds",
    )


# ---- 2.10 reverse-engineering a head -------------------------------------------------------------------
def describe_reference(
    m,
    h,
    threshold,
    *,
    centre_ov=True,
    centre_qk=True,
    skip_bos=True,
    skip_previous=False,
    keep=lambda qk, ov, t: qk >= t and ov >= t,
    d_head=None,
    previous_over=None,
    order=lambda s, d, o: (s, d, o),
):
    pattern = pos_reference(m, h, d_head=d_head)
    e = torch.linalg.eigvals((m.W_O[0, h] @ m.W_U @ m.W_E @ m.W_V[0, h]).detach().double())
    copying = float(e.sum().real / e.abs().sum())
    qk = (m.W_E @ m.W_Q[0, h]) @ (m.W_E @ m.W_K[0, h]).T / m.cfg.d_head**0.5
    qk = (qk - qk.mean(-1, keepdim=True) if centre_qk else qk).detach()
    ov = (m.W_E @ m.W_V[0, h] @ m.W_O[0, h] @ m.W_U).detach()
    ov = ov - ov.mean(-1, keepdim=True) if centre_ov else ov
    if skip_bos:
        qk[0] = qk[:, 0] = -torch.inf
        ov[:, 0] = -torch.inf
    rules = set()
    for s in range(1, m.cfg.d_vocab):
        d, o = int(qk[:, s].argmax()), int(ov[s].argmax())
        if keep(qk[d, s], ov[s, o], threshold):
            rules.add(order(s, d, o))
    below = pattern.diagonal(0 if skip_previous else -1).detach()
    previous = float(below.mean() if previous_over is None else below.sum() / previous_over(m.cfg))
    return previous, copying, rules


def _from_the_config_seed(m, h, t):  # rebuild the planted truth from the model's own seed
    planted = handmade.mystery_heads(m.cfg.seed)
    return (*describe_reference(m, h, t)[:2], set(planted.rules))


def test_describe_head_accepts_reference():
    assert_accepts(checks.check_describe_head, describe_reference)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda m, h, t: describe_reference(m, h, t, skip_previous=True), "offset -1"),
        (
            lambda m, h, t: (describe_reference(m, h, t)[0], 0.5, describe_reference(m, h, t)[2]),
            "copying",
        ),
        (lambda m, h, t: describe_reference(m, h, 3.0), "rules"),  # ignores the threshold
        (lambda m, h, t: (*describe_reference(m, h, t)[:2], set()), "rules missing"),
        (lambda m, h, t: circuits.describe_head(m, 0, h, t), "withholds"),
        # naive readings of the weights: the mystery heads carry offsets and BOS traps for them
        (lambda m, h, t: describe_reference(m, h, t, centre_qk=False), "rules"),
        (lambda m, h, t: describe_reference(m, h, t, centre_ov=False), "rules"),
        (lambda m, h, t: describe_reference(m, h, t, skip_bos=False), "rules"),
        # half-tested rules: the mystery heads carry a half-rule of each kind
        (lambda m, h, t: describe_reference(m, h, t, keep=lambda q, o, t: q >= t), "rules"),
        (lambda m, h, t: describe_reference(m, h, t, keep=lambda q, o, t: o >= t), "rules"),
        (lambda m, h, t: describe_reference(m, h, t, keep=lambda q, o, t: q * o >= t * t), "rules"),
        (lambda m, h, t: describe_reference(m, h, t, keep=lambda q, o, t: q + o >= 2 * t), "rules"),
        (_from_the_config_seed, "withholds"),
        (lambda m, h, t: describe_reference(m, h, 3.0), "at the default threshold 3.0"),
        (
            lambda m, h, t: describe_reference(m, h, t, previous_over=lambda c: c.n_ctx),
            "previous_token was divided by n_ctx",
        ),
        (
            lambda m, h, t: describe_reference(m, h, t, order=lambda s, d, o: (s, o, d)),
            "the rules are (source, output, destination)",
        ),
        # the notebook's (and the first mystery model's) d_head, 16, built in
        (lambda m, h, t: describe_reference(m, h, t, d_head=lambda c: 16), "with d_head 20"),
    ],
)
def test_describe_head_rejects(wrong, diagnosis):
    assert_rejects(checks.check_describe_head, wrong, diagnosis=diagnosis)


def test_a_resized_mystery_model_is_described_as_the_original():
    from helpers.checks.one_layer.describe import _resized

    for seed in (0, 1):
        mystery = handmade.mystery_heads(seed)
        resized = _resized(mystery.model, 80, 20, seed)
        assert (resized.cfg.d_model, resized.cfg.d_head) == (80, 20)
        for head in range(4):
            a = circuits.describe_head(mystery.model, 0, head)
            b = circuits.describe_head(resized, 0, head)
            assert a.rules == b.rules
            assert abs(a.previous_token - b.previous_token) < 1e-4
            assert abs(a.copying - b.copying) < 1e-4


# ---- shortcuts found by the second adversarial pass -----------------------------------------------
def test_positional_pattern_refuses_the_score_terms():
    def via_terms(m, h):
        n = m.cfg.n_ctx
        terms = circuits.attention_score_terms(m, h, torch.zeros(1, n, dtype=torch.long))
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        return terms["position-position"].masked_fill(~causal, float("-inf")).softmax(-1)

    assert_rejects(
        checks.check_positional_pattern, via_terms, diagnosis="circuits.attention_score_terms"
    )


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (
            lambda m, h, n: [t for _, t in one_layer._strongest(m, 0, h, n, [0])],
            "circuits._strongest",
        ),
        (
            lambda m, h, n: [
                t for _, hh, t in circuits.strongest_skip_trigrams(m, 0, 50, [0]) if hh == h
            ][:n],
            "circuits.strongest_skip_trigrams",
        ),  # fmt: skip
    ],
)
def test_top_skip_trigrams_refuses_the_references_around_it(wrong, diagnosis):
    assert_rejects(checks.check_top_skip_trigrams, wrong, diagnosis=diagnosis)


def test_top_skip_trigrams_explains_a_wrong_order():
    with checks.fixed_seed(0), pytest.raises(checks.CheckFailed) as info:
        checks.check_top_skip_trigrams(lambda m, h, n: top_reference(m, h, n)[::-1])
    assert "is your strength exactly this product" in str(info.value)


def test_skip_trigrams_names_a_left_out_bos():
    def without_bos(m, h, s, k):
        qk, ov = circuits.full_qk_circuit(m, 0, h)[:, s], circuits.full_ov_circuit(m, 0, h)[s]
        qk, ov = qk.clone(), ov.clone()
        qk[0] = ov[0] = float("-inf")
        return qk.topk(k).indices.tolist(), ov.topk(k).indices.tolist()

    # every draw holds a case whose top k holds BOS, and the check names it
    for seed in range(8):
        with checks.fixed_seed(seed), pytest.raises(checks.CheckFailed) as info:
            checks.check_skip_trigrams(without_bos)
        assert "BOS included" in str(info.value), f"seed {seed}: {info.value}"


def test_path_expansion_must_use_the_pattern_it_is_given():
    def recomputed(m, t, p):  # recomputes the pattern from the weights instead of using `p`
        resid = m.W_E[t] + m.W_pos[: t.shape[1]]
        attn = m.blocks[0].attn
        q = torch.einsum("bpd,hde->bhpe", resid, attn.W_Q)
        k = torch.einsum("bpd,hde->bhpe", resid, attn.W_K)
        n = t.shape[1]
        scores = (q @ k.transpose(-1, -2) / m.cfg.d_head**0.5).masked_fill(
            ~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf")
        )
        return _expansion()(m, t, scores.softmax(-1))

    assert_rejects(checks.check_path_expansion, recomputed, diagnosis="ignores the pattern")
