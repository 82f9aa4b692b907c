"""Exercises 3.3 and 3.8: a virtual head's OV circuit and virtual weights."""

from __future__ import annotations

import torch

from helpers import circuits
from helpers.checks._base import generator, random_models
from helpers.checks._judge import Case
from helpers.checks._registry import Exercise, declare
from helpers.checks.composition._shared import (
    model_tags,
    model_words,
)


# ---- 3.3 a virtual head's OV circuit ---------------------------------------------------------------
def _virtual_head_cases(seed: int) -> list[Case]:
    """Every pair of heads of a two-layer and of a three-layer model (whose layer 1 is not its
    last), the same head index in both layers and different ones."""
    cases = []
    for model in random_models(seed, 2, n_layers=2, per_model=[{}, {"n_layers": 3}]):
        H, L, D, V = model.cfg.n_heads, model.cfg.n_layers, model.cfg.d_model, model.cfg.d_vocab
        a0, a1, last = model.blocks[0].attn, model.blocks[1].attn, model.blocks[-1].attn
        hints = {
            (D, D): "[d_model, d_model] is the shape of OV₀ OV₁ alone: the full OV circuit reads "
            "tokens through W_E and writes logits through W_U, W_E OV₀ OV₁ W_U.",
            (V, D): "[d_vocab, d_model]: W_U is missing at the end (W_E OV₀ OV₁ W_U).",
            (D, V): "[d_model, d_vocab]: W_E is missing at the start (W_E OV₀ OV₁ W_U).",
        }
        for h0 in range(H):
            for h1 in range(H):
                with torch.no_grad():
                    expected = circuits.virtual_head_ov_circuit(model, (0, h0), (1, h1))
                    OV0, OV1 = a0.W_V[h0] @ a0.W_O[h0], a1.W_V[h1] @ a1.W_O[h1]
                    mistakes = {
                        "the heads are in the wrong order: the layer-0 head acts first, so its "
                        "OV comes first in the row convention (W_E OV₀ OV₁ W_U).": (
                            model.W_E @ OV1 @ OV0 @ model.W_U
                        ),
                        "the circuit is transposed: rows are source tokens, columns output "
                        "logits.": expected.T,
                        "the layer-1 head is missing: that is the layer-0 head's own OV "
                        "circuit.": circuits.full_ov_circuit(model, 0, h0),
                        "the layer-0 head is missing: that is the layer-1 head's own OV "
                        "circuit.": circuits.full_ov_circuit(model, 1, h1),
                    }
                    if L > 2:
                        mistakes["the second head was taken from the last layer: it is in "
                                 "layer 1, whatever the model's depth."] = (
                            model.W_E @ OV0 @ last.W_V[h1] @ last.W_O[h1] @ model.W_U
                        )  # fmt: skip
                tags = {"the same head index in both layers" if h0 == h1 else
                        "different head indices", *model_tags(model)}  # fmt: skip
                cases.append(Case((model, h0, h1), expected, mistakes,
                                  f"heads L0H{h0}, L1H{h1} of {model_words(model)}",
                                  shape_hints=hints, tags=tags))  # fmt: skip
    return cases


declare(Exercise(
    number="3.3", title="a virtual head's OV circuit", functions=("virtual_head_ov",),
    cases=_virtual_head_cases, reference=circuits.virtual_head_ov_circuit, block_forward=True,
    withhold=(circuits.virtual_head_ov_circuit, circuits.full_ov_circuit),
    covers=frozenset({"the same head index in both layers", "different head indices",
                      "3 layers"}),
    passed="W_E OV₀ OV₁ W_U for every pair of heads of a two- and a three-layer random model.",
))  # fmt: skip


# ---- 3.8 virtual weights ---------------------------------------------------------------------------
_READ_WITH = {"q": "queries, W_Q", "k": "keys, W_K", "v": "values, W_V"}


def _virtual_weight_cases(seed: int) -> list[Case]:
    """Every pair of layers (writer earlier) of a random two- and three-layer model, each kind,
    with heads drawn at check time: writer and reader heads differ (so that no mix-up of the two
    can pass), and each layer pair's three kinds take different writer heads (so that no head
    index can be built in)."""
    per_model = [{"n_layers": 2}, {"n_layers": 3}]
    g = generator(seed + 1)
    cases = []
    for model in random_models(seed, 2, per_model=per_model):
        L, H, d, D = (model.cfg.n_layers, model.cfg.n_heads, model.cfg.d_head, model.cfg.d_model)
        W = {kind: getattr(model, f"W_{kind.upper()}").detach() for kind in ("q", "k", "v", "o")}
        hints = {
            (D, D): "[d_model, d_model] is the shape of W_V @ W_O (a head's OV circuit) or of "
            "W_kind^B @ W_O^A (the factors in the wrong order). The virtual weight goes from A's "
            "output (d_head) to B's input (d_head): W_O^A @ W_kind^B, [d_head, d_head].",
            (D, d): "[d_model, d_head] is the shape of a W_Q, W_K or W_V alone, or of the "
            "writer's whole OV circuit before the reader's weight (W_V^A @ W_O^A @ W_kind^B). The "
            "virtual weight starts at A's output z_A, after W_V^A: W_O^A @ W_kind^B, "
            "[d_head, d_head].",
            (d, D): "[d_head, d_model] is the shape of a W_O alone, or of W_O^A @ W_V^B @ W_O^B "
            "(through the reader's output too). The virtual weight stops at B's input: "
            "W_O^A @ W_kind^B, [d_head, d_head].",
        }
        model_cases = []
        for la in range(L):
            for lb in range(la + 1, L):
                heads = torch.randperm(H, generator=g).tolist()
                for i, kind in enumerate(circuits.READ_KINDS):
                    ha, hb = heads[i % H], heads[(i + 1) % H]
                    expected = circuits.virtual_weight(model, (la, ha), (lb, hb), kind).detach()
                    W_O_A, W_read = W["o"][la, ha], W[kind][lb, hb]
                    mistakes = [
                        ("the virtual weight is transposed (W_kind^Bᵀ @ W_O^Aᵀ): rows are the "
                         "writer's d_head, columns the reader's, W_O^A @ W_kind^B.",
                         (W_O_A @ W_read).T),
                        ("the reader's own W_O was used: the virtual weight starts with the "
                         "writer's W_O (what A writes), then the reader's W_Q, W_K or W_V (how B "
                         "reads it).", W["o"][lb, hb] @ W_read),
                        ("writer and reader are swapped: the writer (first argument) is the head "
                         "of the earlier layer, whose W_O writes; the reader's W_Q, W_K or W_V "
                         "reads.", W["o"][lb, hb] @ W[kind][la, ha]),
                        ("a head index is mixed up: the writer's W_O is at writer = (layer, "
                         "head), the reader's weight at reader = (layer, head).",
                         W_O_A @ W[kind][lb, ha]),
                        ("a head index is mixed up: the writer's W_O is at writer = (layer, "
                         "head), the reader's weight at reader = (layer, head).",
                         W["o"][la, hb] @ W_read),
                    ]  # fmt: skip
                    for other in circuits.READ_KINDS:
                        if other != kind:
                            mistakes.append((
                                f"kind {kind!r} is the reader's {_READ_WITH[kind]}; your answer "
                                f"used its W_{other.upper()}.", W_O_A @ W[other][lb, hb],
                            ))  # fmt: skip
                    tags = {f"kind {kind!r}", *model_tags(model)}
                    if lb - la > 1:
                        tags.add("a writer two layers before its reader")
                    where = f"writer L{la}H{ha}, reader L{lb}H{hb}, kind {kind!r}"
                    model_cases.append(Case((model, (la, ha), (lb, hb), kind), expected,
                                            mistakes, where, hints, tags=tags))  # fmt: skip
        for case in model_cases:  # tagged from what the cases hold: several writers per layer
            layer = case.args[1][0]
            if len({c.args[1][1] for c in model_cases if c.args[1][0] == layer}) > 1:
                case.tags = {*case.tags, "several writer heads of one layer"}
        cases += model_cases
    return cases


declare(Exercise(
    number="3.8", title="virtual weights", functions=("virtual_weight",),
    cases=_virtual_weight_cases, reference=circuits.virtual_weight, block_forward=True,
    withhold=(circuits.virtual_weight, circuits.read_shares),
    covers=frozenset({"kind 'q'", "kind 'k'", "kind 'v'", "3 layers",
                      "a writer two layers before its reader",
                      "several writer heads of one layer"}),
    passed="W_O^A @ W_Q/K/V^B for writers one and two layers before their readers, every kind, "
    "several heads of each layer, in random two- and three-layer models.",
))  # fmt: skip
