"""Checkers of chapter 02: OV and QK circuits, copying score, skip-trigrams, the bug."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from helpers import attribution, circuits, evals
from helpers.checks._base import (
    CheckFailed,
    call_learner,
    checker,
    diagnose,
    diagnose_float,
    draw_seed,
    expect_float,
    expect_tensor,
    expect_token_list,
    generator,
    heads_phrase,
    passed,
    random_model,
    random_tokens,
)
from helpers.data import SkipTrigramLanguage
from helpers.models import AttnOnlyTransformer


@checker
def check_full_ov_circuit(full_ov_circuit: Callable) -> None:
    """Exercise 2.1: `full_ov_circuit(model, head) -> [d_vocab (source), d_vocab (output)]`."""
    ex = "Exercise 2.1 (full_ov_circuit)"
    seed = draw_seed()
    for i in range(2):
        model = random_model(seed + i)
        V = model.cfg.d_vocab
        for head in range(model.cfg.n_heads):
            W_V, W_O = model.W_V[0, head], model.W_O[0, head]
            with torch.no_grad():
                expected = circuits.full_ov_circuit(model, 0, head)
                mistakes = {
                    "the circuit is transposed: in the row convention row = source token and "
                    "column = output logit, i.e. W_E @ W_V @ W_O @ W_U (the paper writes the "
                    "transpose).": expected.T,
                    "W_O is applied before W_V: a head first reads values (W_V, d_model → "
                    "d_head), then writes them out (W_O, d_head → d_model).": (
                        model.W_E @ W_O.T @ W_V.T @ model.W_U
                    ),
                    "the unembedding is W_Eᵀ instead of W_U (the two are not tied here).": (
                        model.W_E @ W_V @ W_O @ model.W_E.T
                    ),
                    "this is another head's circuit: index the head with W_V[0, head], "
                    "W_O[0, head].": circuits.full_ov_circuit(model, 0, (head + 1) % 2),
                }
            out = call_learner(
                ex, full_ov_circuit, model, head, withhold=[circuits.full_ov_circuit]
            )
            out = expect_tensor(ex, "full_ov_circuit", out, (V, V))
            diagnose(ex, out, expected, mistakes, atol=1e-4, where=f"head {head}")
    passed(ex, f"W_E @ W_V @ W_O @ W_U for {heads_phrase(2)}.")


@checker
def check_path_expansion(path_expansion_logits: Callable) -> None:
    """Exercise 2.2: `path_expansion_logits(model, tokens, pattern) -> [batch, pos, d_vocab]`,
    the logits rebuilt from the direct path and each head's full OV circuit, with the heads'
    attention patterns `[batch, head, query_pos, key_pos]` given. The model's forward pass is
    not available to the answer."""
    ex = "Exercise 2.2 (path_expansion_logits)"
    seed = draw_seed()
    for i in range(2):
        model = random_model(seed + i)
        tokens = random_tokens(model, seed + 10 + i)
        logits, cache = model.run_with_cache(tokens)
        pattern = cache["blocks.0.attn.hook_pattern"]
        with torch.no_grad():
            direct, heads = attribution.one_layer_path_expansion(model, tokens)
            ov = torch.stack(
                [circuits.full_ov_circuit(model, 0, h)[tokens] for h in range(model.cfg.n_heads)]
            )  # [head, batch, key_pos, d_vocab]
            mistakes = {
                "these are the direct path's logits alone; add one term per head.": direct,
                "the heads' terms are missing the direct path W_E W_U.": heads.sum(0),
                "the pattern is transposed: a query mixes the OV rows of the keys it attends "
                "to, pattern[b, h] @ OV_rows (rows = query positions).": direct
                + torch.einsum("bhkq,hbkv->bqv", pattern, ov),
                "every head's OV rows were used at full weight: each must be weighted by its "
                "attention pattern.": direct + ov.sum(0),
            }
        out = call_learner(
            ex,
            path_expansion_logits,
            model,
            tokens,
            pattern,
            withhold=[attribution.one_layer_path_expansion, attribution.logit_contributions],
            block_forward=True,
        )
        out = expect_tensor(ex, "path_expansion_logits", out, logits.shape)
        diagnose(ex, out, logits.detach(), mistakes, atol=1e-4)
    passed(ex, "direct path + Σ_h A^h · OV^h rows = the logits of two random test models.")


def _with_spectra(seed: int) -> AttnOnlyTransformer:
    """A one-layer model whose four heads have OV circuits with chosen eigenvalues (untied W_E
    and W_U): a mostly copying head, a mostly anti-copying one, one with complex eigenvalues and
    a random one. The non-zero eigenvalues of W_E W_V W_O W_U are those of M = W_O W_U W_E W_V
    (d_head × d_head), so W_O = M · pinv(W_U W_E W_V) gives the head the spectrum of M."""
    model = random_model(seed, n_heads=4, d_head=4, d_model=16)
    rng = generator(seed + 1)
    spectra = [
        torch.diag(torch.tensor([3.0, 2.0, 1.5, -0.5])),  # copying, not purely
        torch.diag(torch.tensor([-2.0, -1.5, -1.0, 0.7])),  # anti-copying
        torch.tensor([[1.0, -2.0, 0, 0], [2.0, 1.0, 0, 0], [0, 0, -0.5, 0], [0, 0, 0, 0.8]]),
    ]  # the third: eigenvalues 1 ± 2i, -0.5, 0.8
    attn = model.blocks[0].attn
    with torch.no_grad():
        for head, core in enumerate(spectra):
            basis = torch.randn(4, 4, generator=rng) + 2 * torch.eye(4)
            M = basis @ core @ torch.linalg.inv(basis)  # same eigenvalues, no visible structure
            B = model.W_U @ model.W_E @ attn.W_V[head]  # [d_model, d_head]
            attn.W_O[head] = M @ torch.linalg.pinv(B)
    return model


@checker
def check_copying_score(copying_score: Callable) -> None:
    """Exercise 2.3: `copying_score(model, head) -> float`, Σλ/Σ|λ| of the full OV circuit."""
    ex = "Exercise 2.3 (copying_score)"
    model = _with_spectra(draw_seed())
    for head in range(model.cfg.n_heads):
        W_E, W_U = model.W_E.detach().double(), model.W_U.detach().double()
        W_V, W_O = model.W_V[0, head].detach().double(), model.W_O[0, head].detach().double()
        eig = circuits.ov_eigenvalues(model, 0, head)
        expected = circuits.copying_score(model, 0, head)

        def score_of(matrix: Tensor) -> float:
            e = torch.linalg.eigvals(matrix)
            return float(e.sum().real / e.abs().sum())

        mistakes = [
            ("a score of exactly ±1 for a head that is not a pure copier means numerator and "
             "denominator are the same sum. The numerator is Σλ (its real part), the denominator "
             "Σ|λ|, the sum of each eigenvalue's absolute value, not |Σλ|.", 1.0),
            ("a score of exactly ±1 for a head that is not a pure copier means numerator and "
             "denominator are the same sum. The numerator is Σλ (its real part), the denominator "
             "Σ|λ|, the sum of each eigenvalue's absolute value, not |Σλ|.", -1.0),
            ("the numerator is |Σλ|: keep the sign, Σλ is negative for a head that "
             "anti-copies.", float(eig.sum().abs() / eig.abs().sum())),
            ("only the real parts were summed in the denominator: use the absolute value "
             "(modulus) of each complex eigenvalue.", float(eig.sum().real / eig.real.abs().sum())),
            ("the OV part is transposed: the circuit is W_E @ W_V @ W_O @ W_U, so the small "
             "matrix is W_O @ W_U @ W_E @ W_V.", score_of(W_U @ W_E @ (W_V @ W_O).T)),
            ("W_E.T was used in place of W_U: the unembedding is W_U (not tied to W_E here).",
             score_of(W_O @ W_E.T @ W_E @ W_V)),
            ("these are the eigenvalues of W_V @ W_O alone; the full OV circuit includes the "
             "embedding and unembedding (W_O @ W_U @ W_E @ W_V).", score_of(W_V @ W_O)),
        ]  # fmt: skip
        otherwise = (
            f"head {head}: got {{out:.4f}}, expected {expected:.4f}. Use the eigenvalues of "
            "W_O @ W_U @ W_E @ W_V (d_head × d_head), the non-zero eigenvalues of the full OV "
            "circuit."
        )
        out = call_learner(
            ex,
            copying_score,
            model,
            head,
            withhold=[circuits.copying_score, circuits.ov_eigenvalues],
        )
        out = expect_float(ex, "copying_score", out)
        diagnose_float(ex, out, expected, mistakes, otherwise.format(out=out))
    passed(
        ex,
        "Σλ/Σ|λ| right for a copying head, an anti-copying head, a head with complex "
        "eigenvalues and a random head (untied W_E and W_U).",
    )


@checker
def check_full_qk_circuit(full_qk_circuit: Callable) -> None:
    """Exercise 2.4: `full_qk_circuit(model, head) -> [d_vocab (query), d_vocab (key)]`, scaled by
    1/sqrt(d_head), each query's row centred."""
    ex = "Exercise 2.4 (full_qk_circuit)"
    seed = draw_seed()
    for i in range(2):
        model = random_model(seed + i)
        V = model.cfg.d_vocab
        for head in range(model.cfg.n_heads):
            with torch.no_grad():
                raw = circuits.full_qk_circuit(model, 0, head, normalise=False)
                expected = circuits.row_centred(raw)
                mistakes = {
                    "each query's row must have its mean subtracted: scores are only comparable "
                    "within a query (softmax runs over keys).": raw,
                    "the mean was subtracted over queries (columns) instead of over keys "
                    "(rows).": raw - raw.mean(0, keepdim=True),
                    "the matrix is transposed: rows are query (destination) tokens, columns key "
                    "(source) tokens, W_E W_Q (W_E W_K)ᵀ.": expected.T,
                    "the 1/sqrt(d_head) scale is missing.": expected * model.cfg.d_head**0.5,
                    "the scores are divided by d_head instead of sqrt(d_head).": (
                        expected / model.cfg.d_head**0.5
                    ),
                }
            out = call_learner(
                ex, full_qk_circuit, model, head, withhold=[circuits.full_qk_circuit]
            )
            out = expect_tensor(ex, "full_qk_circuit", out, (V, V))
            diagnose(ex, out, expected, mistakes, atol=1e-4, where=f"head {head}")
    passed(ex, f"scaled, row-centred W_E W_Q W_Kᵀ W_Eᵀ for {heads_phrase(2)}.")


@checker
def check_skip_trigrams(skip_trigrams: Callable) -> None:
    """Exercise 2.5: `skip_trigrams(model, head, source, k) -> (destinations, outputs)`."""
    ex = "Exercise 2.5 (skip_trigrams)"
    seed = draw_seed()
    model = random_model(seed, n_heads=2)
    V = model.cfg.d_vocab
    rng = generator(seed + 1)
    for head in range(model.cfg.n_heads):
        for k in (2, 3, 4):
            source = int(torch.randint(1, V, (), generator=rng))
            exp_dests, exp_outs = circuits.skip_trigrams(model, 0, head, source, k)
            qk = circuits.full_qk_circuit(model, 0, head)
            ov = circuits.full_ov_circuit(model, 0, head)
            out = call_learner(
                ex, skip_trigrams, model, head, source, k, withhold=[circuits.skip_trigrams]
            )
            if not isinstance(out, (tuple, list)) or len(out) != 2:
                raise CheckFailed(ex, "skip_trigrams must return a pair (destinations, outputs).")
            dests = expect_token_list(ex, "the destinations", out[0], k, V)
            outs = expect_token_list(ex, "the outputs", out[1], k, V)
            where = f"head {head}, source {source}, k = {k}"
            if set(dests) != set(exp_dests):
                if set(dests) == set(qk[source].topk(k).indices.tolist()):
                    raise CheckFailed(
                        ex,
                        f"{where}: the destinations were read from the source's row of the QK "
                        "circuit: that is where the source token, as a query, looks. A source "
                        "is a key: read its column, QK[:, source].",
                    )
                raise CheckFailed(ex, f"{where}: destinations {dests}, expected {exp_dests}.")
            if set(outs) != set(exp_outs):
                if set(outs) == set(ov[:, source].topk(k).indices.tolist()):
                    raise CheckFailed(
                        ex,
                        f"{where}: the outputs were read from the source's column of the OV "
                        "circuit; its row, OV[source], is what attending to the source writes "
                        "to the logits.",
                    )
                if set(outs) == set(ov[source].topk(k, largest=False).indices.tolist()):
                    raise CheckFailed(
                        ex, f"{where}: these are the outputs pushed down most; take the largest."
                    )
                raise CheckFailed(ex, f"{where}: outputs {outs}, expected {exp_outs}.")
    passed(ex, "top-k destinations (QK column) and outputs (OV row) for k = 2, 3, 4.")


@checker
def check_crossed_effect(
    crossed_effect: Callable, model: AttnOnlyTransformer, language: SkipTrigramLanguage
) -> None:
    """Exercise 2.6: `crossed_effect(model, contexts, where, source, dest, output) -> float`, the
    mean change of log P(output) after dest when source is written into each context. Checked on
    the notebook's own model and language, with contexts and words drawn at check time."""
    ex = "Exercise 2.6 (crossed_effect)"
    if not isinstance(model, AttnOnlyTransformer) or not isinstance(language, SkipTrigramLanguage):
        raise TypeError("call check_crossed_effect(crossed_effect, model, language)")
    seed = draw_seed()
    rng = generator(seed)
    ids = language.token_to_id
    random_rule = [int(t) for t in torch.randint(1, language.d_vocab, (3,), generator=rng)]
    triples = [(ids["keep"], ids["in"], ids["bay"]), (ids["keep"], ids["at"], ids["mind"]),
               tuple(random_rule)]  # fmt: skip
    for i, (source, dest, output) in enumerate(triples):
        n, length = 40 + 10 * i, 6 + i
        contexts, where = evals.filler_contexts(language, n, length, seed=seed + 1 + i)
        ref = evals.skip_trigram_effect(model, contexts, where, source, dest, output)
        with torch.no_grad():
            with_source = contexts.clone()
            with_source[torch.arange(n), where] = source
            bos, end = torch.zeros(n, 1, dtype=torch.long), torch.full((n, 1), dest)
            logits = {name: model(torch.cat([bos, c, end], 1)).double()
                      for name, c in (("with", with_source), ("without", contexts))}  # fmt: skip
            no_bos = {name: model(torch.cat([c, end], 1)).double()
                      for name, c in (("with", with_source), ("without", contexts))}  # fmt: skip
        lp = {name: x[:, -1].log_softmax(-1)[:, output] for name, x in logits.items()}
        mistakes = [
            ("the sign is flipped: take log P with the source minus log P without it.",
             -ref.mean_change),
            ("that is a change in probability; take the change in log-probability (nats).",
             ref.mean_p_with - ref.mean_p_without),
            ("that is the log of the ratio of mean probabilities; average the per-context "
             "changes of log-probability instead.",
             float(lp["with"].exp().mean().log() - lp["without"].exp().mean().log())),
            ("that is the change of the raw logit; take log-probabilities (log_softmax) first.",
             float((logits["with"][:, -1, output] - logits["without"][:, -1, output]).mean())),
            ("that was read one position too early: the prediction after `dest` is at the last "
             "position, [:, -1].",
             float((logits["with"][:, -2].log_softmax(-1)[:, output]
                    - logits["without"][:, -2].log_softmax(-1)[:, output]).mean())),
            ("BOS is missing: every sequence the model reads starts with BOS (token 0).",
             float((no_bos["with"][:, -1].log_softmax(-1)[:, output]
                    - no_bos["without"][:, -1].log_softmax(-1)[:, output]).mean())),
        ]  # fmt: skip
        names = [language.token_labels[t] for t in (source, dest, output)]
        out = call_learner(
            ex,
            crossed_effect,
            model,
            contexts,
            where,
            source,
            dest,
            output,
            withhold=[evals.skip_trigram_effect, evals.continuation_effect],
        )
        out = expect_float(ex, "crossed_effect", out, "a float (nats)")
        otherwise = (
            f"for {names[0]} … {names[1]} → {names[2]} on {n} contexts of {length} words: got "
            f"{out:+.4f} nats, expected {ref.mean_change:+.4f}. Build BOS + context + dest, with "
            "and without the source at `where`, and compare log_softmax at the last position."
        )
        diagnose_float(ex, out, ref.mean_change, mistakes, otherwise, rel=1e-3, abs_tol=1e-4)
    passed(ex, "exact on the notebook's model, for keep … in → bay, keep … at → mind and a "
           "random triple of words.")  # fmt: skip
