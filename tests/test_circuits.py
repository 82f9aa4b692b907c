import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import circuits
from helpers.data import BigramLanguage
from tests.conftest import make_model, random_tokens


def test_direct_path_is_w_e_w_u_entry_by_entry():
    model = make_model(n_layers=0, n_heads=0)
    M = circuits.direct_path(model)
    for i, j in itertools.product(range(13), range(13)):
        assert torch.isclose(
            M[i, j], sum(model.W_E[i, k] * model.W_U[k, j] for k in range(16)), atol=1e-5
        )


def test_zero_layer_direct_path_is_the_whole_model():
    model = make_model(n_layers=0, n_heads=0, n_ctx=13)
    tokens = torch.arange(13)[None]
    with torch.no_grad():
        assert torch.allclose(model(tokens)[0], circuits.direct_path(model))


def test_row_centred_and_pearson():
    M = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]])
    assert torch.allclose(
        circuits.row_centred(M), torch.tensor([[-2.0, -1.0, 3.0], [-1.0, -1.0, 2.0]])
    )
    a, b = torch.randn(5, 5), torch.randn(5, 5)
    assert np.isclose(circuits.pearson(a, b), np.corrcoef(a.flatten(), b.flatten())[0, 1])
    assert np.isclose(circuits.pearson(a, 3 * a + 1), 1.0)
    with pytest.raises(ValueError, match=r"shapes differ: \(5, 5\) vs \(5,\)"):
        circuits.pearson(a, b[0])


def test_best_rank_k_is_optimal_against_random_rank_k_matrices():
    gen = torch.Generator().manual_seed(0)
    M = torch.randn(8, 6, generator=gen, dtype=torch.float64)
    approx = circuits.best_rank_k(M, 2)
    assert torch.linalg.matrix_rank(approx) == 2
    best = (M - approx).norm()
    for _ in range(200):  # Eckart-Young: no rank-2 matrix is closer
        other = torch.randn(8, 2, generator=gen, dtype=torch.float64) @ torch.randn(
            2, 6, generator=gen, dtype=torch.float64
        )
        assert (M - other).norm() >= best
    assert torch.allclose(circuits.best_rank_k(M, 6), M)
    with pytest.raises(ValueError, match=r"k must be an int in 0..6, got 7"):
        circuits.best_rank_k(M, 7)


def test_expected_loss_of_the_truth_is_the_entropy_rate():
    lang = BigramLanguage(n_states=5, seed=2)
    P = lang.transition_matrix
    assert np.isclose(circuits.expected_loss(P.log(), P, lang.stationary), lang.entropy_rate())
    assert np.isclose(
        circuits.expected_loss(P.log() + 7.0, P, lang.stationary), lang.entropy_rate()
    )
    assert circuits.expected_loss(torch.zeros(5, 5), P, lang.stationary) > lang.entropy_rate()
    assert np.isclose(circuits.expected_loss(torch.zeros(5, 5), P, lang.stationary), np.log(5))


# ---- one-layer circuits, each against a brute-force computation ---------------------------------
def _one_layer(**kw):
    return make_model(n_layers=1, n_heads=2, d_vocab=7, n_ctx=5, **kw)


def test_full_qk_circuit_brute_force():
    model = _one_layer()
    for head in range(2):
        raw = circuits.full_qk_circuit(model, 0, head, normalise=False)
        norm = circuits.full_qk_circuit(model, 0, head)
        for a, b in itertools.product(range(7), range(7)):
            q = model.W_E[a] @ model.W_Q[0, head]
            k = model.W_E[b] @ model.W_K[0, head]
            assert torch.isclose(raw[a, b], q @ k / 2.0, atol=1e-5)  # d_head = 4
        for a in range(7):
            assert torch.allclose(norm[a], raw[a] - raw[a].mean(), atol=1e-5)


def test_qk_circuit_gives_the_models_scores_on_two_token_sequences():
    """In a shortformer model the score of query token a on key token b is the QK entry plus
    positional terms; with positions zeroed, the model's own score is exactly the entry."""
    model = _one_layer()
    with torch.no_grad():
        model.pos_embed.W_pos.zero_()
    raw = circuits.full_qk_circuit(model, 0, 1, normalise=False)
    _, cache = model.run_with_cache(torch.tensor([[3, 5]]))
    assert torch.isclose(cache["blocks.0.attn.hook_attn_scores"][0, 1, 1, 0], raw[5, 3], atol=1e-5)


def test_positional_qk_circuit_brute_force():
    model = _one_layer()
    P = circuits.positional_qk_circuit(model, 0, 1)
    for i, j in itertools.product(range(5), range(5)):
        if j > i:
            assert torch.isinf(P[i, j]) and P[i, j] < 0
        else:
            q, k = model.W_pos[i] @ model.W_Q[0, 1], model.W_pos[j] @ model.W_K[0, 1]
            assert torch.isclose(P[i, j], q @ k / 2.0, atol=1e-5)


def test_full_ov_circuit_brute_force_and_is_what_the_head_writes():
    model = _one_layer()
    ov = circuits.full_ov_circuit(model, 0, 1)
    for s in range(7):
        expected = ((model.W_E[s] @ model.W_V[0, 1]) @ model.W_O[0, 1]) @ model.W_U
        assert torch.allclose(ov[s], expected, atol=1e-5)
    # A query at position 0 attends only to itself: the head's logit term is exactly row t.
    _, cache = model.run_with_cache(torch.tensor([[4]]))
    head_logits = cache["blocks.0.attn.hook_result"][0, 0, 1] @ model.W_U
    assert torch.allclose(head_logits, ov[4], atol=1e-5)


def test_ov_eigenvalues_are_the_nonzero_eigenvalues_of_the_full_circuit():
    model = _one_layer()
    for head in range(2):
        small = circuits.ov_eigenvalues(model, 0, head)
        full = torch.linalg.eigvals(circuits.full_ov_circuit(model, 0, head).double())
        full = full[full.abs() > 1e-6]
        key = lambda z: (round(z.real, 4), round(z.imag, 4))  # noqa: E731
        assert sorted(map(key, small.tolist())) == sorted(map(key, full.tolist()))


def test_copying_score_of_known_heads():
    model = _one_layer()
    with torch.no_grad():  # W_U = W_Eᵀ and W_V W_O = a projection: OV = W_E P W_Eᵀ, PSD
        model.unembed.W_U.copy_(model.W_E.T)
        model.blocks[0].attn.W_V[0] = torch.eye(16)[:, :4]
        model.blocks[0].attn.W_O[0] = torch.eye(16)[:4]
        model.blocks[0].attn.W_V[1] = torch.eye(16)[:, :4]
        model.blocks[0].attn.W_O[1] = -torch.eye(16)[:4]
    assert circuits.copying_score(model, 0, 0) > 0.999
    assert circuits.copying_score(model, 0, 1) < -0.999
    eig = circuits.ov_eigenvalues(_one_layer(), 0, 0)
    by_hand = float(sum(e.real for e in eig) / sum(abs(e) for e in eig))
    assert np.isclose(circuits.copying_score(_one_layer(), 0, 0), by_hand)


def test_skip_trigrams_brute_force_and_ignore():
    model = _one_layer()
    qk, ov = circuits.full_qk_circuit(model, 0, 0), circuits.full_ov_circuit(model, 0, 0)
    for source in range(7):
        dests, outs = circuits.skip_trigrams(model, 0, 0, source, k=2)
        assert dests == sorted(range(7), key=lambda q: -qk[q, source])[:2]
        assert outs == sorted(range(7), key=lambda o: -ov[source, o])[:2]
        dests, outs = circuits.skip_trigrams(model, 0, 0, source, k=6, ignore=[0])
        assert 0 not in dests and 0 not in outs and len(dests) == 6


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: circuits.full_qk_circuit(m, 0, 2), r"head must be an int in 0..1, got 2"),
        (lambda m: circuits.full_ov_circuit(m, 1, 0), r"layer must be an int in 0..0, got 1"),
        (lambda m: circuits.copying_score(m, 0, -1), r"head must be an int in 0..1, got -1"),
        (lambda m: circuits.positional_qk_circuit(m, 0, 5), r"head must be an int in 0..1"),
        (
            lambda m: circuits.skip_trigrams(m, 0, 0, 1, k=8),
            r"k must be an int in 1..7 \(the vocabulary size\), got 8",
        ),
        (
            lambda m: circuits.skip_trigrams(m, 0, 0, 1, k=7, ignore=[0]),
            r"k must be an int in 1..6",
        ),
        (
            lambda m: circuits.skip_trigrams(m, 0, 0, 9),
            r"source \(a token id\) must be an int in 0..6, got 9",
        ),
        (
            lambda m: circuits.skip_trigrams(m, 0, 0, 1, ignore=[7]),
            r"each entry of ignore \(a token id\) must be an int in 0..6, got 7",
        ),
    ],
)
def test_bad_input_to_circuit_functions(call, message):
    with pytest.raises(ValueError, match=message):
        call(_one_layer())


# ---- two-layer circuits ------------------------------------------------------------------------
def _fro(M):
    return float(M.detach().norm())


def test_composition_scores_brute_force_in_the_papers_convention():
    model = make_model()  # 2 layers, 3 heads
    a0, a1 = model.blocks[0].attn, model.blocks[1].attn
    scores = {k: circuits.composition_scores(model, k) for k in "QKV"}
    for h0, h1 in itertools.product(range(3), range(3)):
        # the paper's column-convention matrices: W_OV = (W_V W_O)ᵀ, W_QK = W_Q W_Kᵀ (same)
        W_OV1 = (a0.W_V[h0] @ a0.W_O[h0]).T
        W_QK2 = a1.W_Q[h1] @ a1.W_K[h1].T
        W_OV2 = (a1.W_V[h1] @ a1.W_O[h1]).T
        q = _fro(W_QK2.T @ W_OV1) / (_fro(W_QK2) * _fro(W_OV1))
        k = _fro(W_QK2 @ W_OV1) / (_fro(W_QK2) * _fro(W_OV1))
        v = _fro(W_OV2 @ W_OV1) / (_fro(W_OV2) * _fro(W_OV1))
        assert np.isclose(scores["Q"][h0, h1], q, rtol=1e-4)
        assert np.isclose(scores["K"][h0, h1], k, rtol=1e-4)
        assert np.isclose(scores["V"][h0, h1], v, rtol=1e-4)


def test_composition_baseline_is_about_one_over_sqrt_d_model_and_seeded():
    model = make_model(d_model=64, d_head=8)
    mean, std = circuits.composition_baseline(model, "K", n_samples=300)
    assert abs(mean - 64**-0.5) < 0.01 and 0 < std < 0.02
    assert circuits.composition_baseline(model, "K", n_samples=300) == (mean, std)
    assert circuits.composition_baseline(model, "K", n_samples=300, seed=1) != (mean, std)


def test_virtual_head_and_composition_circuits_brute_force():
    model = make_model()
    a0, a1 = model.blocks[0].attn, model.blocks[1].attn
    virtual = circuits.virtual_head_ov_circuit(model, (0, 1), (1, 2))
    for s in range(13):
        x = model.W_E[s] @ a0.W_V[1] @ a0.W_O[1] @ a1.W_V[2] @ a1.W_O[2]
        assert torch.allclose(virtual[s], x @ model.W_U, atol=1e-5)
    K = circuits.k_composition_circuit(model, (0, 0), (1, 1))
    Q = circuits.q_composition_circuit(model, (0, 0), (1, 1))
    for a, b in itertools.product(range(13), range(13)):
        q = model.W_E[a] @ a1.W_Q[1]
        k = model.W_E[b] @ a0.W_V[0] @ a0.W_O[0] @ a1.W_K[1]
        assert torch.isclose(K[a, b], q @ k / 2.0, atol=1e-5)
        q2 = model.W_E[a] @ a0.W_V[0] @ a0.W_O[0] @ a1.W_Q[1]
        assert torch.isclose(Q[a, b], q2 @ (model.W_E[b] @ a1.W_K[1]) / 2.0, atol=1e-5)


def test_diagonal_top1_accuracy():
    M = torch.eye(4) + torch.tensor([[0, 0, 0, 0], [0, 0, 5.0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    assert circuits.diagonal_top1_accuracy(M) == 0.75
    assert circuits.diagonal_top1_accuracy(M, ignore=[1]) == 1.0
    with pytest.raises(ValueError, match="square matrix"):
        circuits.diagonal_top1_accuracy(torch.ones(2, 3))


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda m: circuits.composition_scores(m, "X"),
            r"kind must be one of \('Q', 'K', 'V'\), got 'X'",
        ),
        (
            lambda m: circuits.composition_scores(m, "K", 1, 0),
            r"need 0 <= earlier_layer < later_layer <= 1",
        ),
        (
            lambda m: circuits.composition_baseline(m, "K", n_samples=1),
            r"n_samples must be an int >= 2",
        ),
        (
            lambda m: circuits.virtual_head_ov_circuit(m, (1, 0), (0, 0)),
            r"earlier head must be in an earlier layer",
        ),
        (
            lambda m: circuits.k_composition_circuit(m, (0, 5), (1, 0)),
            r"head must be an int in 0..2, got 5",
        ),
        (
            lambda m: circuits.q_composition_circuit(m, (0, 0), (2, 0)),
            r"layer must be an int in 0..1, got 2",
        ),
    ],
)
def test_bad_input_to_composition_functions(call, message):
    with pytest.raises(ValueError, match=message):
        call(make_model())


def test_diagonal_top1_accuracy_refuses_what_it_would_get_wrong():
    M = torch.eye(4)
    with pytest.raises(
        ValueError, match=r"each entry of ignore \(a token id\) must be an int in 0..3, got -1"
    ):
        circuits.diagonal_top1_accuracy(M, ignore=[-1])  # would silently mean the last token
    with pytest.raises(ValueError, match="got 4"):
        circuits.diagonal_top1_accuracy(M, ignore=[4])
    with pytest.raises(ValueError, match="NaN or infinite"):
        circuits.diagonal_top1_accuracy(torch.full((3, 3), float("nan")))
    with pytest.raises(ValueError, match="leaves no rows"):
        circuits.diagonal_top1_accuracy(M, ignore=[0, 1, 2, 3])
    assert circuits.diagonal_top1_accuracy(M, ignore=torch.tensor([0, 1])) == 1.0


EIGENVALUE_CRASH = """
import torch
from helpers import circuits
from tests.conftest import make_model, random_tokens

for value in ("nan", "inf"):
    for call in (circuits.copying_score, circuits.ov_eigenvalues):
        model = make_model()
        with torch.no_grad():
            model.blocks[0].attn.W_V[0, 0, 0] = float(value)
        try:
            call(model, 0, 1)
        except ValueError as err:
            print("ValueError:", err)
"""


def test_non_finite_weights_are_an_error_not_a_crash_or_a_hang():
    """On NaN, torch.linalg.eigvals kills the process; on inf it hangs. Run in a subprocess so
    that a regression fails this test instead of the whole run."""
    result = subprocess.run(
        [sys.executable, "-c", EIGENVALUE_CRASH], capture_output=True, text=True, timeout=60,
        cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 4 and all("the model's weight blocks.0.attn.W_V holds" in x for x in lines)


def test_circuits_read_the_weights_alone():
    """Nothing in `circuits` runs the model: every function works with the forward pass gone."""
    model = make_model()

    def no_forward(*args, **kwargs):
        raise AssertionError("a circuit ran the model")

    model.forward = no_forward
    circuits.direct_path(model)
    for layer, head in itertools.product(range(2), range(3)):
        circuits.full_qk_circuit(model, layer, head)
        circuits.positional_qk_circuit(model, layer, head)
        circuits.full_ov_circuit(model, layer, head)
        circuits.copying_score(model, layer, head)
        circuits.skip_trigrams(model, layer, head, source=1)
    for kind in circuits.COMPOSITION_KINDS:
        circuits.composition_scores(model, kind)
    circuits.virtual_head_ov_circuit(model, (0, 1), (1, 2))
    circuits.k_composition_circuit(model, (0, 1), (1, 2))
    circuits.q_composition_circuit(model, (0, 1), (1, 2))


def test_heads_and_tokens_may_be_tensors_or_numpy_integers():
    model = make_model()
    expected = circuits.full_ov_circuit(model, 1, 2)
    assert torch.equal(circuits.full_ov_circuit(model, torch.tensor(1), np.int64(2)), expected)
    source = torch.tensor(3)
    assert circuits.skip_trigrams(model, 0, 1, source) == circuits.skip_trigrams(model, 0, 1, 3)
    pair = (torch.tensor(0), np.int64(1)), (np.int64(1), torch.tensor(2))
    assert torch.equal(
        circuits.k_composition_circuit(model, *pair),
        circuits.k_composition_circuit(model, (0, 1), (1, 2)),
    )


def test_a_head_that_writes_nothing_has_no_copying_score():
    model = make_model()
    with torch.no_grad():
        model.blocks[0].attn.W_O[1] = 0.0
    with pytest.raises(ValueError, match="L0H1 writes nothing"):
        circuits.copying_score(model, 0, 1)


# ---- functions added for the exercises ------------------------------------------------------------
def test_positional_pattern_is_the_softmax_of_the_positional_circuit():
    model = make_model()
    pattern = circuits.positional_pattern(model, 1, 2)
    assert torch.allclose(pattern, circuits.positional_qk_circuit(model, 1, 2).softmax(-1))
    assert torch.allclose(pattern.sum(-1), torch.ones(10)) and (pattern.triu(1) == 0).all()


def test_score_terms_add_up_to_the_attention_scores():
    model = make_model(n_layers=1)
    tokens = random_tokens(model, batch=1)
    terms = circuits.attention_score_terms(model, 1, tokens[0])
    _, cache = model.run_with_cache(tokens)
    lower = torch.ones(10, 10, dtype=torch.bool).tril()
    total = sum(terms.values())
    assert torch.allclose(
        total[lower], cache["blocks.0.attn.hook_attn_scores"][0, 1][lower], atol=1e-5
    )
    with pytest.raises(ValueError, match="give one sequence"):
        circuits.attention_score_terms(model, 1, tokens.repeat(2, 1))
    with pytest.raises(ValueError, match="shortformer"):
        circuits.attention_score_terms(
            make_model(n_layers=1, positional_embedding_type="standard"), 0, tokens
        )


def test_top_skip_trigrams_brute_force():
    model = make_model(n_layers=1)
    qk, ov = circuits.full_qk_circuit(model, 0, 1), circuits.full_ov_circuit(model, 0, 1)
    ov_c = ov - ov.mean(-1, keepdim=True)
    scored = []
    for s, d, o in itertools.product(range(1, 13), repeat=3):
        if qk[d, s] > 0 and ov_c[s, o] > 0:
            scored.append((float(qk[d, s] * ov_c[s, o]), (s, d, o)))
    expected = [t for _, t in sorted(scored, reverse=True)[:5]]
    assert circuits.top_skip_trigrams(model, 0, 1, 5, ignore=[0]) == expected
    strongest = circuits.strongest_skip_trigrams(model, 0, 5, ignore=[0])
    assert [v for v, _, _ in strongest] == sorted((v for v, _, _ in strongest), reverse=True)
    assert len({t for _, _, t in strongest}) == 5


def test_strongest_skip_trigrams_never_hold_every_triple(monkeypatch):
    """Per source, only the n strongest destinations and outputs can make the top n: the search
    takes sources a block at a time and finds what the full V x V x V search finds."""
    from helpers.circuits import one_layer

    model = make_model(n_layers=1)
    whole = circuits.top_skip_trigrams(model, 0, 1, 40, ignore=[0])
    monkeypatch.setattr(one_layer, "_PRODUCTS_PER_BLOCK", 7)  # one source per block
    assert circuits.top_skip_trigrams(model, 0, 1, 40, ignore=[0]) == whole
    real_topk = torch.Tensor.topk
    sizes = []

    def spy(self, *args, **kwargs):
        sizes.append(self.numel())
        return real_topk(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "topk", spy)
    large = make_model(n_layers=1, d_vocab=300, n_ctx=8)
    circuits.top_skip_trigrams(large, 0, 0, 3)
    assert max(sizes) == 300**2  # the V x V circuits themselves; never V x V x V


def test_spearman():
    assert circuits.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert circuits.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert circuits.spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)


def test_describe_head_recovers_what_was_planted():
    from helpers import handmade

    for seed in range(3):
        mystery = handmade.mystery_heads(seed)
        descriptions = [circuits.describe_head(mystery.model, 0, h) for h in range(4)]
        assert set().union(*(d.rules for d in descriptions)) == mystery.rules
        kinds = dict(zip(mystery.kinds, descriptions, strict=True))
        assert kinds["previous token"].previous_token > 0.9
        assert kinds["copying"].copying > 0.9 and kinds["anti-copying"].copying < -0.9
        assert kinds["skip-trigrams"].rules == mystery.rules


def test_composition_map_and_baselines():
    from helpers import handmade

    for seed in range(8):
        mystery = handmade.mystery_composition(seed)
        assert circuits.composition_map(mystery.model) == mystery.wiring
        ratios = torch.stack([
            circuits.composition_scores(mystery.model, k)
            / circuits.composition_baseline(mystery.model, k)[0]
            for k in "QKV"
        ])  # fmt: skip
        for h1, planted in mystery.wiring.items():
            ranked = ratios[..., h1].flatten().sort(descending=True).values
            if planted is None:
                assert ranked[0] < 1.5
            else:  # the planted reading is clear, and its runner-up no match for it
                assert 2.2 < ranked[0] < 4.1 and ranked[1] < 0.9 * ranked[0]
        assert all(
            v is None for v in circuits.composition_map(mystery.model, threshold=5.0).values()
        )
    mean, std = circuits.random_composition_baseline(64, 16, 400)
    assert abs(mean - 0.125) < 0.005 and 0 < std < 0.02
    model = make_model(d_model=64, d_head=16)
    assert circuits.composition_baseline(model, "V", 400) == circuits.random_composition_baseline(
        64, 16, 400, kind="V"
    )
    with pytest.raises(ValueError, match="two-layer model"):
        circuits.composition_map(make_model(n_layers=1))


def test_composition_map_in_standard_deviations():
    """Far above chance but under twice the baseline: found in standard deviations only."""
    from helpers import handmade

    mystery = handmade.mystery_composition(0)
    (h1, (kind, h0)) = next((h, w) for h, w in mystery.wiring.items() if w is not None)
    mean, std = circuits.composition_baseline(mystery.model, kind)
    score = float(circuits.composition_scores(mystery.model, kind)[h0, h1])
    z = (score - mean) / std
    assert score / mean > 2 and z > 10
    by_sigmas = circuits.composition_map(mystery.model, threshold=1e9, sigmas=z - 1)
    assert by_sigmas[h1] == (kind, h0)  # the ratio threshold is ignored
    assert circuits.composition_map(mystery.model, sigmas=z + 1)[h1] is None
    with pytest.raises(ValueError, match="sigmas must be None or a number > 0"):
        circuits.composition_map(mystery.model, sigmas=-1)


def test_k_composition_positivity_of_a_perfect_matcher():
    from helpers import handmade

    hand = handmade.reference_model(handmade.Layout(d_vocab=6, n_ctx=9))
    assert circuits.k_composition_positivity(hand, (0, 0), (1, 0)) == pytest.approx(1.0)
    model = make_model()
    value = circuits.k_composition_positivity(model, (0, 1), (1, 2))
    assert -1.0 <= value <= 1.0
