"""Checkers of chapter 00."""

import copy
import math

import einops
import pytest
import torch

from helpers import attribution, checks, circuits, evals
from helpers.evals import head_scores
from helpers.models import AttnOnlyTransformer, HookedTransformerConfig
from tests.checks.conftest import assert_accepts, assert_rejects


def _causal(n):
    return torch.ones(n, n, dtype=torch.bool).tril()


def _scores(x, W_Q, W_K):
    return (x @ W_Q) @ (x @ W_K).transpose(-1, -2)


def pattern_reference(x, W_Q, W_K):
    scores = _scores(x, W_Q, W_K) / math.sqrt(W_Q.shape[-1])
    return scores.masked_fill(~_causal(x.shape[1]), float("-inf")).softmax(-1)


def pattern_in_place_then_constant(x, W_Q, W_K):
    x.zero_()  # edits the input it was given; the checker's own copy is unaffected
    return pattern_reference(x, W_Q, W_K)


def test_attention_pattern_accepts_reference(capsys):
    assert_accepts(checks.check_attention_pattern, pattern_reference)
    assert_accepts(  # another form: a large negative number for -inf, float64
        checks.check_attention_pattern,
        lambda x, Q, K: (
            (_scores(x.double(), Q.double(), K.double()) / math.sqrt(Q.shape[-1]))
            .masked_fill(~_causal(x.shape[1]), -1e9)
            .softmax(-1)
        ),
    )
    out = capsys.readouterr().out
    assert "✔ Exercise 0.1" in out and "random test models" in out


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda x, Q, K: (_scores(x, Q, K) / math.sqrt(Q.shape[-1])).softmax(-1), "no causal mask"),
        (
            lambda x, Q, K: (
                (_scores(x, Q, K) / math.sqrt(Q.shape[-1]))
                .masked_fill(~_causal(x.shape[1]), float("-inf"))
                .softmax(-2)
            ),
            "softmax runs over query positions",
        ),
        (
            lambda x, Q, K: (
                _scores(x, Q, K).masked_fill(~_causal(x.shape[1]), float("-inf")).softmax(-1)
            ),
            "1/sqrt(d_head) scale is missing",
        ),
        (
            lambda x, Q, K: (
                (_scores(x, Q, K) / Q.shape[-1])
                .masked_fill(~_causal(x.shape[1]), float("-inf"))
                .softmax(-1)
            ),
            "divided by d_head instead of sqrt(d_head)",
        ),
        (
            lambda x, Q, K: (
                (_scores(x, Q, K) / math.sqrt(Q.shape[-1])).softmax(-1) * _causal(x.shape[1])
            ),
            "mask is applied after the softmax",
        ),
        (
            lambda x, Q, K: (
                (_scores(x, Q, K).transpose(-1, -2) / math.sqrt(Q.shape[-1]))
                .masked_fill(~_causal(x.shape[1]), float("-inf"))
                .softmax(-1)
            ),
            "queries and keys are swapped",
        ),
        (
            lambda x, Q, K: torch.tril(_scores(x, Q, K) / math.sqrt(Q.shape[-1])).softmax(-1),
            "the masked scores were set to 0, not -inf",
        ),
        (
            lambda x, Q, K: (
                (_scores(x, Q, K) / math.sqrt(Q.shape[-1]))
                .masked_fill(~_causal(x.shape[1]).T, float("-inf"))
                .softmax(-1)
            ),
            "the mask is on the wrong side",
        ),
        (
            lambda x, Q, K: (
                (_scores(x, Q, K) / math.sqrt(x.shape[-1]))
                .masked_fill(~_causal(x.shape[1]), float("-inf"))
                .softmax(-1)
            ),
            "divided by sqrt(d_model)",
        ),
        (
            lambda x, Q, K: (
                (_scores(x, Q, K) / math.sqrt(Q.shape[-1]))
                .masked_fill(~_causal(x.shape[1]), float("-inf"))
                .log_softmax(-1)
            ),
            "these are log-probabilities (log_softmax)",
        ),
        (
            lambda x, Q, K: (_scores(x, Q, K) / math.sqrt(Q.shape[-1])).masked_fill(
                ~_causal(x.shape[1]), float("-inf")
            ),
            "these are the masked scores, before the softmax",
        ),
        (
            lambda x, Q, K: (
                (_scores(x, Q, K) * math.sqrt(Q.shape[-1]))
                .masked_fill(~_causal(x.shape[1]), float("-inf"))
                .softmax(-1)
            ),
            "multiplied by sqrt(d_head)",
        ),
        (
            lambda x, Q, K: (
                (_scores(x, Q, K) / math.sqrt(Q.shape[-1]))
                .masked_fill(
                    torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).triu(), -torch.inf
                )
                .softmax(-1)
            ),
            "the diagonal is masked too",
        ),
        (_scores, "matches none of the common mistakes"),
        (pattern_in_place_then_constant, "matches none of the common mistakes"),
        (lambda x, Q, K: pattern_reference(x, Q, K)[0], "expected (2,"),
        (lambda x, Q, K: torch.full((2, 9, 9), 0.1), "Exercise 0.1"),  # a constant
        ("not a function", "pass your function itself"),
    ],
)
def test_attention_pattern_rejects(wrong, diagnosis):
    assert_rejects(checks.check_attention_pattern, wrong, diagnosis=diagnosis)


def head_reference(pattern, x, W_V, W_O):
    return pattern @ (x @ W_V) @ W_O


def test_head_output_accepts_reference():
    assert_accepts(checks.check_head_output, head_reference)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda p, x, W_V, W_O: p.transpose(-1, -2) @ x @ W_V @ W_O, "pattern is transposed"),
        (lambda p, x, W_V, W_O: p @ x @ (W_V @ W_O).T, "OV matrix is transposed"),
        (lambda p, x, W_V, W_O: x @ W_V @ W_O, "pattern is not applied"),
        (lambda p, x, W_V, W_O: x + p @ x @ W_V @ W_O, "the input x was added"),
        (lambda p, x, W_V, W_O: p @ x @ W_V, "returned shape"),
        (
            lambda p, x, W_V, W_O: (p @ x @ W_V @ W_O).tolist(),
            "must return a torch.Tensor, got list",
        ),
        (lambda p, x, W_V, W_O: (p.zero_(), x @ W_V @ W_O * 0)[1], "matches none"),
    ],
)
def test_head_output_rejects(wrong, diagnosis):
    assert_rejects(checks.check_head_output, wrong, diagnosis=diagnosis)


def direct_reference(model, tokens):
    x0 = model.W_E[tokens]
    if model.cfg.positional_embedding_type == "standard":
        x0 = x0 + model.W_pos[: tokens.shape[-1]]
    return x0 @ model.W_U


def test_direct_path_accepts_reference():
    assert_accepts(checks.check_direct_path_logits, direct_reference)


def _zero_everything_then_answer(model, tokens):
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # in place, on the learner's copy
    return direct_reference(model, tokens)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (
            lambda m, t: (m.W_E[t] + m.W_pos[: t.shape[-1]]) @ m.W_U,
            "shortformer model the positional embedding never enters",
        ),
        (lambda m, t: m.W_E[t] @ m.W_U, "the positional part is missing"),
        (lambda m, t: m(t), "forward pass"),
        (lambda m, t: m.run_with_cache(t)[1]["blocks.0.hook_resid_pre"] @ m.W_U, "forward pass"),
        (lambda m, t: type(m)(m.cfg).forward(t), "forward pass"),
        (
            attribution.direct_path_logits,
            "calls the course's `attribution.direct_path_logits`, which this exercise withholds",
        ),
        (lambda m, t: attribution.logit_contributions(m, t)[0][0], "which this exercise withholds"),
        (_zero_everything_then_answer, "matches none"),
        (  # W_E @ W_U, looked up: right for shortformer positions (and no b_U), were it allowed
            lambda m, t: circuits.direct_path(m)[t],
            "`circuits.direct_path`, which this exercise withholds",
        ),
        (
            lambda m, t: (
                (m.W_E[t] + m.W_pos * (m.cfg.positional_embedding_type == "standard")) @ m.W_U
            ),  # W_pos of n_ctx positions: the tokens may be fewer
            "the tokens may be shorter than n_ctx, so the positions' embeddings are W_pos[:n_pos]",
        ),
    ],
)
def test_direct_path_rejects(wrong, diagnosis):
    assert_rejects(checks.check_direct_path_logits, wrong, diagnosis=diagnosis)


def test_an_unfinished_stub_raises_not_implemented_unchanged():
    def stub(*args):
        raise NotImplementedError("Exercise 0.1: your code here")

    with pytest.raises(checks.ExerciseNotDone, match="your code here") as info:
        checks.check_attention_pattern(stub)
    assert isinstance(info.value, NotImplementedError)
    assert "runs anyway" in "\n".join(info.value._render_traceback_())


def test_failure_renders_as_a_short_diagnosis_in_ipython():
    err = checks.CheckFailed("Exercise 9.9", "line one\nline two")
    assert err._render_traceback_() == ["✘ Exercise 9.9 is not right yet.", "line one", "line two"]


def test_the_reference_is_usable_again_after_a_check():
    model_tokens = None
    with pytest.raises(checks.CheckFailed):
        checks.check_direct_path_logits(attribution.direct_path_logits)
    from tests.conftest import make_model, random_tokens

    model = make_model()
    model_tokens = random_tokens(model)
    assert attribution.direct_path_logits(model, model_tokens).shape == (3, 10, 13)


# ---- 0.3 a whole layer ---------------------------------------------------------------------------
def layer_reference(
    resid,
    pos,
    W_Q,
    W_K,
    W_V,
    W_O,
    *,
    pos_in_values=False,
    causal=True,
    mean=False,
    residual=True,
    pos_in_stream=False,
):
    qk_in = resid + pos
    v_in = resid + pos if pos_in_values else resid
    q, k = torch.einsum("bpm,hmd->bhpd", qk_in, W_Q), torch.einsum("bpm,hmd->bhpd", qk_in, W_K)
    v = torch.einsum("bpm,hmd->bhpd", v_in, W_V)
    scores = q @ k.transpose(-1, -2) / W_Q.shape[-1] ** 0.5
    if causal:
        scores = scores.masked_fill(~_causal(scores.shape[-1]), float("-inf"))
    out = torch.einsum("bhqk,bhkd,hdm->bqm", scores.softmax(-1), v, W_O)
    out = out / W_Q.shape[0] if mean else out
    stream = resid + pos if pos_in_stream else resid
    return stream + out if residual else out


def test_attention_layer_accepts_reference():
    assert_accepts(checks.check_attention_layer, layer_reference)


@pytest.mark.parametrize(
    "kwargs, diagnosis",
    [
        ({"residual": False}, "without the residual stream"),
        ({"pos_in_values": True}, "positions also went into the values"),
        ({"causal": False}, "no causal mask"),
        ({"mean": True}, "heads were averaged"),
        ({"pos_in_stream": True}, "the positions were added to the stream the layer returns"),
        (
            {"pos_in_stream": True, "pos_in_values": True},  # x = resid + pos, used everywhere
            "the positions were added to the stream the layer returns",
        ),
    ],
)
def test_attention_layer_rejects(kwargs, diagnosis):
    assert_rejects(
        checks.check_attention_layer, lambda *a: layer_reference(*a, **kwargs), diagnosis=diagnosis
    )


@pytest.mark.parametrize(
    "scale, dim, diagnosis",
    [
        (lambda W_Q: 1.0, -1, "scale of the scores is missing"),
        (lambda W_Q: W_Q.shape[1] ** 0.5, -1, "divided by sqrt(d_model)"),
        (lambda W_Q: W_Q.shape[-1] ** 0.5, -2, "the softmax runs over query positions"),
    ],
)
def test_attention_layer_rejects_the_patterns_mistakes(scale, dim, diagnosis):
    def layer(resid, pos, W_Q, W_K, W_V, W_O):
        x = resid + pos
        q, k = torch.einsum("bpm,hmd->bhpd", x, W_Q), torch.einsum("bpm,hmd->bhpd", x, W_K)
        v = torch.einsum("bpm,hmd->bhpd", resid, W_V)
        scores = (q @ k.transpose(-1, -2) / scale(W_Q)).masked_fill(
            ~_causal(x.shape[1]), float("-inf")
        )
        return resid + torch.einsum("bhqk,bhkd,hdm->bqm", scores.softmax(dim), v, W_O)

    assert_rejects(checks.check_attention_layer, layer, diagnosis=diagnosis)


def test_attention_layer_rejects_positions_missing():
    assert_rejects(
        checks.check_attention_layer,
        lambda r, p, *w: layer_reference(r, torch.zeros_like(p), *w),
        diagnosis="positions are missing",
    )


# ---- 0.4 concatenate, then project ---------------------------------------------------------------
def concat_reference(z, W_O):
    return einops.rearrange(z, "b p h d -> b p (h d)") @ einops.rearrange(W_O, "h d m -> (h d) m")


def test_concat_then_project_accepts_reference_and_the_sum():
    assert_accepts(checks.check_concat_then_project, concat_reference)
    assert_accepts(
        checks.check_concat_then_project, lambda z, W_O: torch.einsum("bphd,hdm->bpm", z, W_O)
    )


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (
            lambda z, W_O: (
                einops.rearrange(z, "b p h d -> b p (d h)")
                @ einops.rearrange(W_O, "h d m -> (h d) m")
            ),
            "different orders",
        ),
        (
            lambda z, W_O: (
                einops.rearrange(z, "b p h d -> b p (h d)")
                @ einops.rearrange(W_O, "h d m -> (d h) m")
            ),
            "different orders",
        ),
        (lambda z, W_O: z[:, :, 0] @ W_O[0], "only the first head"),
        (lambda z, W_O: concat_reference(z, W_O) / W_O.shape[0], "heads were averaged"),
        (lambda z, W_O: einops.rearrange(z, "b p h d -> b p (h d)"), "returned shape"),
    ],
)
def test_concat_then_project_rejects(wrong, diagnosis):
    assert_rejects(checks.check_concat_then_project, wrong, diagnosis=diagnosis)


# ---- 0.5 reading the cache -----------------------------------------------------------------------
def bos_reference(model, tokens):
    _, cache = model.run_with_cache(tokens)
    return torch.stack(
        [
            cache[f"blocks.{i}.attn.hook_pattern"][:, :, 1:, 0].mean(dim=(0, 2))
            for i in range(model.cfg.n_layers)
        ]
    )


def test_bos_attention_accepts_reference():
    assert_accepts(checks.check_bos_attention, bos_reference)


def _bos_variant(kind):
    def fn(model, tokens):
        _, cache = model.run_with_cache(tokens)
        p = torch.stack([cache[f"blocks.{i}.attn.hook_pattern"] for i in range(model.cfg.n_layers)])
        if kind == "with query 0":
            return p[..., :, 0].mean(dim=(1, 3))
        if kind == "from bos":
            return p[..., 0, :].mean(dim=(1, 3))
        if kind == "first sequence":
            return p[:, 0, :, 1:, 0].mean(-1)
        return p[..., 1:, 0].mean(dim=(1, 3)).T  # transposed

    return fn


@pytest.mark.parametrize(
    "kind, diagnosis",
    [
        ("with query 0", "position 0 was included"),
        ("from bos", "attention *from* BOS"),
        ("first sequence", "only the first sequence"),
        ("transposed", "Exercise 0.5"),
    ],
)
def test_bos_attention_rejects(kind, diagnosis):
    assert_rejects(checks.check_bos_attention, _bos_variant(kind), diagnosis=diagnosis)


def test_bos_attention_must_not_assume_two_layers():
    def two_layers(model, tokens):
        _, cache = model.run_with_cache(tokens)
        return torch.stack(
            [cache[f"blocks.{i}.attn.hook_pattern"][:, :, 1:, 0].mean(dim=(0, 2)) for i in (0, 1)]
        )

    with checks.fixed_seed(0), pytest.raises(checks.CheckFailed) as info:  # the one-layer model
        checks.check_bos_attention(two_layers)
    message = str(info.value)
    assert "raised KeyError on a 1-layer model: 'blocks.1.attn.hook_pattern'" in message
    assert "in two_layers:" in message  # the learner's own line, none of the checker's
    assert "_judge.py" not in message and "_registry.py" not in message
    assert "l in range(model.cfg.n_layers)" in message


def test_bos_attention_refuses_the_pattern_stack():
    def via_stack(model, tokens):
        return head_scores._pattern_stack(model, tokens)[..., 1:, 0].mean(dim=(2, 3))

    assert_rejects(checks.check_bos_attention, via_stack, diagnosis="_pattern_stack")


def test_bos_attention_refuses_the_reference():
    assert_rejects(
        checks.check_bos_attention, evals.bos_attention, diagnosis="`evals.bos_attention`"
    )


# ---- 0.6 replacing an activation -----------------------------------------------------------------
def uniform_reference(model, tokens, layer, *, causal=True, layers=None, rows="sum to 1"):
    n = tokens.shape[1]
    pattern = torch.ones(n, n).tril() if causal else torch.ones(n, n)
    if rows == "sum to 1":
        pattern = pattern / pattern.sum(-1, keepdim=True)
    elif rows == "over n":
        pattern = pattern / n
    elif rows == "columns":
        pattern = pattern / pattern.sum(0, keepdim=True)
    chosen = [layer] if layers is None else layers(model)
    return model.run_with_hooks(
        tokens,
        [(f"blocks.{j}.attn.hook_pattern", lambda x, hook: pattern.expand_as(x)) for j in chosen],
    )


def test_with_uniform_attention_accepts_reference():
    assert_accepts(checks.check_with_uniform_attention, uniform_reference)


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (lambda m, t, layer: uniform_reference(m, t, layer, causal=False), "must stay causal"),
        (
            lambda m, t, layer: uniform_reference(
                m, t, layer, layers=lambda m: range(m.cfg.n_layers)
            ),
            "more layers than `layer` were replaced",
        ),
        (lambda m, t, layer: uniform_reference(m, t, 0), "the hook is always on layer 0"),
        (
            lambda m, t, layer: uniform_reference(
                m, t, layer, layers=lambda m: [(layer + 1) % m.cfg.n_layers]
            ),
            "another layer was replaced instead of `layer`",
        ),
        (lambda m, t, layer: m(t), "Exercise 0.6"),
        (lambda m, t, layer: m(t), "nothing was replaced: these are the model's own logits"),
        (lambda m, t, layer: uniform_reference(m, t, layer, rows=None), "do not sum to 1"),
        (lambda m, t, layer: uniform_reference(m, t, layer, rows="over n"), "do not sum to 1"),
        (lambda m, t, layer: uniform_reference(m, t, layer, rows="columns"), "do not sum to 1"),
    ],
)
def test_with_uniform_attention_rejects(wrong, diagnosis):
    assert_rejects(checks.check_with_uniform_attention, wrong, diagnosis=diagnosis)


def _uniform_sized_by_n_ctx(model, tokens, layer):
    n = model.cfg.n_ctx  # the checker's tokens may be shorter
    pattern = torch.ones(n, n).tril()
    pattern = pattern / pattern.sum(-1, keepdim=True)
    hook = (f"blocks.{layer}.attn.hook_pattern", lambda x, hook: pattern.expand_as(x))
    return model.run_with_hooks(tokens, [hook])


def test_with_uniform_attention_says_the_tokens_may_be_shorter_than_n_ctx():
    assert_rejects(
        checks.check_with_uniform_attention,
        _uniform_sized_by_n_ctx,
        diagnosis="may be shorter than n_ctx; build the uniform pattern from tokens.shape[-1]",
    )


# ---- 0.8 logit contributions ---------------------------------------------------------------------
def contributions_reference(model, cache):
    parts = [cache["hook_embed"]]
    for layer in range(model.cfg.n_layers):
        parts += list(cache[f"blocks.{layer}.attn.hook_result"].unbind(dim=2))
    return torch.stack(parts) @ model.W_U


def test_logit_contributions_accepts_reference():
    assert_accepts(checks.check_logit_contributions, contributions_reference)


def _head_major(model, cache):
    parts = [cache["hook_embed"]]
    for head in range(model.cfg.n_heads):
        parts += [
            cache[f"blocks.{layer}.attn.hook_result"][:, :, head]
            for layer in range(model.cfg.n_layers)
        ]
    return torch.stack(parts) @ model.W_U


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_head_major, "ordered head by head"),
        (
            lambda m, c: torch.cat(
                [
                    (c["hook_embed"] + c["hook_pos_embed"])[None] @ m.W_U,
                    contributions_reference(m, c)[1:],
                ]
            ),
            "positional embedding was added",
        ),
        (lambda m, c: contributions_reference(m, c)[1:], "returned shape"),
        (
            lambda m, c: attribution.logit_contributions(m, c["hook_embed"].argmax(-1))[0],
            "withholds",
        ),
    ],
)
def test_logit_contributions_rejects(wrong, diagnosis):
    assert_rejects(checks.check_logit_contributions, wrong, diagnosis=diagnosis)


def test_logit_contributions_must_not_assume_two_layers():
    def two_layers(model, cache):  # the notebook's model has two
        parts = [cache["hook_embed"]]
        for layer in (0, 1):
            parts += list(cache[f"blocks.{layer}.attn.hook_result"].unbind(dim=2))
        return torch.stack(parts) @ model.W_U

    assert_rejects(checks.check_logit_contributions, two_layers, diagnosis="returned shape")


# ---- 0.9 no privileged basis ---------------------------------------------------------------------
WRITERS, READERS = ("W_E", "W_pos", "W_O", "b_O"), ("W_Q", "W_K", "W_V", "W_U")


def rotate_reference(model, R, *, writer="R", reader="Rt", skip=()):
    """A learner's answer: a deep copy whose writers get ... @ R and readers R.T @ ...; the
    keywords make the common mistakes ("Rt": R.T, "R": R, None: unrotated)."""
    factor = {"R": R, "Rt": R.T}
    rotated = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in rotated.named_parameters():
            last = name.split(".")[-1]
            if last in skip:
                continue
            if last in WRITERS and writer is not None:
                p.copy_(p @ factor[writer])
            elif last in READERS and reader is not None:
                p.copy_(factor[reader] @ p)
    return rotated


def rotate_by_state_dict(model, R):
    """Another learner's answer: a new model loaded with a rotated state dict."""
    state = {}
    for name, value in model.state_dict().items():
        if name.endswith(("W_E", "W_pos", "W_O", "b_O")):
            value = value @ R
        elif name.endswith(("W_Q", "W_K", "W_V", "W_U")):
            value = R.T @ value
        state[name] = value
    new = AttnOnlyTransformer(model.cfg)
    new.load_state_dict(state)
    return new


def test_rotate_residual_accepts_reference(capsys):
    assert_accepts(checks.check_rotate_residual, rotate_reference)
    assert_accepts(checks.check_rotate_residual, rotate_by_state_dict)
    out = capsys.readouterr().out
    assert "✔ Exercise 0.9" in out and "the logits unchanged" in out


@pytest.mark.parametrize(
    "kwargs, diagnosis",
    [
        ({"writer": "Rt", "reader": "R"}, "rotated by Rᵀ: the stream's new coordinates are x R"),
        ({"reader": "R"}, "readers were multiplied by R instead of Rᵀ"),
        ({"writer": "Rt"}, "writers were multiplied by Rᵀ instead of R"),
        ({"writer": None, "reader": None}, "the model is unchanged"),
        ({"skip": ("W_pos",)}, "W_pos was not rotated"),
        ({"skip": ("W_E",)}, "W_E was not rotated"),
        ({"skip": ("W_U",)}, "W_U was not rotated"),
        ({"skip": ("W_V",)}, "W_V was not rotated: values read the stream too"),
        ({"skip": ("W_O",)}, "W_O was not rotated"),
        ({"skip": ("W_O", "b_O")}, "W_O was not rotated"),
        ({"skip": ("b_O",)}, "b_O was not rotated"),
    ],
)
def test_rotate_residual_rejects(kwargs, diagnosis):
    assert_rejects(
        checks.check_rotate_residual,
        lambda m, R: rotate_reference(m, R, **kwargs),
        diagnosis=diagnosis,
    )


def test_rotate_residual_names_w_pos_forgotten_only_with_shortformer_positions():
    def rotate(m, R):
        shortformer = m.cfg.positional_embedding_type == "shortformer"
        return rotate_reference(m, R, skip=("W_pos",) if shortformer else ())

    assert_rejects(checks.check_rotate_residual, rotate, diagnosis="W_pos was not rotated")


def _in_place(model, R):
    model.load_state_dict(rotate_reference(model, R).state_dict())
    return model


def _in_place_then_copy(model, R):
    return copy.deepcopy(_in_place(model, R))


def _shallow_copy(model, R):
    new = copy.copy(model)  # shares its layers with the input
    new.embed.W_E = torch.nn.Parameter(model.W_E @ R)
    return new


def _shares_a_bias(model, R):
    new = rotate_reference(model, R)
    new.blocks[0].attn.b_Q = model.blocks[0].attn.b_Q  # unrotated, but the input's own tensor
    return new


def _fresh_model(model, R):
    return AttnOnlyTransformer(model.cfg)  # a model of the right shapes, random weights


def _two_layers_only(model, R):
    new = rotate_reference(model, R)
    if model.cfg.n_layers > 2:  # as if written for the notebook's two-layer model
        new.blocks[2].load_state_dict(model.blocks[2].state_dict())
    return new


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_in_place, "edited the model it was given in place"),
        (_in_place_then_copy, "edited the model it was given in place"),
        (_shallow_copy, "edited the model it was given in place"),
        (lambda m, R: m, "returned the model it was given, unchanged"),
        (lambda m, R: None, "got NoneType (did you forget the return?)"),
        (lambda m, R: rotate_reference(m, R).W_E, "must return a model"),
        (lambda m, R: rotate_reference(m, R).double(), "is torch.float64"),
        (_shares_a_bias, "shares blocks.0.attn.b_Q with the input model"),
        (_fresh_model, "its weights are not the input's rotated by R"),
        (
            _two_layers_only,
            "rotated by R: blocks.2.attn.W_Q, blocks.2.attn.W_K, blocks.2.attn.W_V, ",
        ),
        (circuits.rotate_residual, "`circuits.rotate_residual`, which this exercise withholds"),
        ("not a function", "pass your function itself"),
    ],
)
def test_rotate_residual_rejects_other_answers(wrong, diagnosis):
    assert_rejects(checks.check_rotate_residual, wrong, diagnosis=diagnosis)


def _rotate_assuming_biases(model, R):  # the notebook's solution without its `if`
    new = copy.deepcopy(model)
    with torch.no_grad():
        new.embed.W_E.copy_(model.W_E @ R)
        new.pos_embed.W_pos.copy_(model.W_pos @ R)
        for block, old in zip(new.blocks, model.blocks, strict=True):
            for name in ("W_Q", "W_K", "W_V"):
                getattr(block.attn, name).copy_(R.T @ getattr(old.attn, name))
            block.attn.W_O.copy_(old.attn.W_O @ R)
            block.attn.b_O.copy_(old.attn.b_O @ R)
        new.unembed.W_U.copy_(R.T @ model.W_U)
    return new


def _rotate_by_shape(model, R):
    """The side of each weight told by which axis has d_model's size: right unless d_head or
    d_vocab is d_model too."""
    new = copy.deepcopy(model)
    with torch.no_grad():
        for _, p in new.named_parameters():
            if p.shape[-1] == R.shape[0]:
                p.copy_(p @ R)
            elif p.ndim >= 2 and p.shape[-2] == R.shape[0]:
                p.copy_(R.T @ p)
    return new


def _rotate_heads_by_shape(model, R):
    """The embeddings and unembedding by name, the heads' weights by the axis of size d_model:
    wrong only where d_head is d_model."""
    new = rotate_reference(model, R, skip=("W_Q", "W_K", "W_V", "W_O"))
    with torch.no_grad():
        for block, old in zip(new.blocks, model.blocks, strict=True):
            for name in ("W_Q", "W_K", "W_V", "W_O"):
                W = getattr(old.attn, name)
                getattr(block.attn, name).copy_(W @ R if W.shape[-1] == R.shape[0] else R.T @ W)
    return new


def _rotate_biases_of_size_d_model(model, R):
    new = rotate_reference(model, R)
    with torch.no_grad():
        if new.unembed.b_U is not None and new.unembed.b_U.shape[0] == R.shape[0]:
            new.unembed.b_U.copy_(model.unembed.b_U @ R)  # a bias of d_model's size: b_O, or so
    return new


def _rebuilt_without_the_positions(model, R):
    c = model.cfg
    cfg = HookedTransformerConfig(
        n_layers=c.n_layers,
        d_model=c.d_model,
        n_heads=c.n_heads,
        d_head=c.d_head,
        n_ctx=c.n_ctx,
        d_vocab=c.d_vocab,
        use_bias=c.use_bias,
    )  # positional_embedding_type forgotten
    new = AttnOnlyTransformer(cfg)
    new.load_state_dict(rotate_reference(model, R).state_dict())
    return new


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_rotate_assuming_biases, "raised AttributeError on rotation 1 of a 2-layer model with "
         "shortformer positions, no biases"),
        (_rotate_assuming_biases, "rotate b_O only if it is not None"),
        (_rotate_by_shape, "with standard positions, biases, "),  # d_vocab = d_model there
        (_rotate_by_shape, "unembed.W_U"),
        (_rotate_heads_by_shape, "no biases, 1 head of d_head"),
        (_rotate_heads_by_shape, "its weights are not the input's rotated by R: blocks.0.attn.W_Q"),
        (_rotate_biases_of_size_d_model, "unembed.b_U is not what it should be"),
        (_rebuilt_without_the_positions, "your model's config is not the input's "
         "(positional_embedding_type: 'shortformer', the input's 'standard')"),
    ],
)  # fmt: skip
def test_rotate_residual_rejects_answers_fitted_to_the_test_models(wrong, diagnosis):
    assert_rejects(checks.check_rotate_residual, wrong, diagnosis=diagnosis)


def _set_the_property(model, R):
    new = copy.deepcopy(model)
    new.W_E = model.W_E @ R  # a read-only view
    return new


def _assign_a_tensor(model, R):
    new = copy.deepcopy(model)
    new.embed.W_E = model.W_E @ R  # a tensor where a Parameter belongs
    return new


def _copy_with_grad(model, R):
    new = copy.deepcopy(model)
    new.embed.W_E.copy_(model.W_E @ R)  # outside torch.no_grad()
    return new


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_set_the_property, "model.W_E, model.W_Q, … are read-only views of the weights"),
        (_assign_a_tensor, "copy into the parameter instead"),
        (_copy_with_grad, "do the copies inside `with torch.no_grad():`"),
    ],
)
def test_rotate_residual_explains_the_usual_errors(wrong, diagnosis):
    assert_rejects(checks.check_rotate_residual, wrong, diagnosis=diagnosis, seeds=(0,))


def test_rotate_residual_says_when_the_logits_are_kept_but_the_weights_are_not():
    def rotate_by_r_squared(m, R):  # another rotation: the same logits, other coordinates
        return rotate_reference(rotate_reference(m, R), R)

    assert_rejects(
        checks.check_rotate_residual,
        rotate_by_r_squared,
        diagnosis="your model computes the same logits as the original, but",
    )


# ---- 0.10 a head's write subspace ----------------------------------------------------------------
def projector_reference(W_O):
    """A learner's answer: the right singular vectors whose singular values are not rounding
    noise, as orthonormal rows; the projector is basisᵀ basis."""
    _, S, Vh = torch.linalg.svd(W_O, full_matrices=False)
    rank = int((S > max(W_O.shape) * torch.finfo(W_O.dtype).eps * S.max()).sum())
    return Vh[:rank].T @ Vh[:rank]


def _qr_projector(W_O):
    Q, _ = torch.linalg.qr(W_O.T)  # [d_model, d_head]: assumes rank d_head
    return Q @ Q.T


def _unthresholded_svd(W_O):
    _, S, Vh = torch.linalg.svd(W_O, full_matrices=False)
    basis = Vh[S > 0]  # float32 rounding leaves a tiny singular value where W_O has none
    return basis.T @ basis


def _normalised_rows(W_O):
    rows = W_O / W_O.norm(dim=1, keepdim=True)
    return rows.T @ rows


def _with_singular_values(W_O):
    _, S, Vh = torch.linalg.svd(W_O, full_matrices=False)
    return Vh.T @ torch.diag(S) @ Vh


def _one_short(W_O):
    _, S, Vh = torch.linalg.svd(W_O, full_matrices=False)
    rank = int((S > 1e-4 * S.max()).sum())
    return Vh[: rank - 1].T @ Vh[: rank - 1]


def _first_row(W_O):
    row = W_O[:1] / W_O[:1].norm()
    return row.T @ row


def test_write_projector_accepts_reference(capsys):
    assert_accepts(checks.check_write_projector, projector_reference)
    assert_accepts(checks.check_write_projector, lambda W_O: torch.linalg.pinv(W_O) @ W_O)
    assert_accepts(checks.check_write_projector, lambda W_O: projector_reference(W_O.double()))
    assert "✔ Exercise 0.10" in capsys.readouterr().out


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (
            lambda W_O: W_O.T @ W_O,
            "W_O.T @ W_O is a projector only when W_O's rows are orthonormal",
        ),
        (
            lambda W_O: torch.eye(W_O.shape[1]) - projector_reference(W_O),
            "the projector onto the complement",
        ),
        (
            lambda W_O: (lambda Q: Q @ Q.T)(torch.linalg.qr(W_O.T, mode="complete")[0]),
            "that is the identity",
        ),
        (lambda W_O: torch.eye(W_O.shape[1]), "that is the identity"),
        (_normalised_rows, "rows were normalised but not made orthogonal"),
        (_with_singular_values, "the singular values were kept"),
        (_first_row, "only W_O's first row"),
        (_one_short, "one direction short"),
        (lambda W_O: W_O @ W_O.T, "a d_head × d_head matrix"),
        (lambda W_O: (lambda Q: Q @ Q.T)(torch.linalg.qr(W_O)[0]), "a d_head × d_head matrix"),
        (lambda W_O: projector_reference(W_O)[:, :-1], "expected ("),
        (lambda W_O: projector_reference(W_O).round().long(), "expected a float tensor"),
        (lambda W_O: projector_reference(W_O).tolist(), "must return a torch.Tensor, got list"),
        (lambda W_O: torch.full((W_O.shape[1],) * 2, 0.1), "matches none"),  # a constant
        (lambda W_O: (W_O.zero_(), projector_reference(W_O + 1e-3))[1], "Exercise 0.10"),
        (
            lambda W_O: circuits.projector(circuits.row_space(W_O)),
            "`circuits.row_space`, which this exercise withholds",
        ),
        (
            lambda W_O: circuits.projector(W_O),
            "`circuits.projector`, which this exercise withholds",
        ),
    ],
)
def test_write_projector_rejects(wrong, diagnosis):
    assert_rejects(checks.check_write_projector, wrong, diagnosis=diagnosis)


@pytest.mark.parametrize(
    "wrong",
    [
        _qr_projector,
        _unthresholded_svd,
        lambda W_O: W_O.T @ torch.linalg.inv(W_O @ W_O.T) @ W_O,  # singular, or garbage
    ],
)
def test_write_projector_catches_an_answer_that_assumes_rank_d_head(wrong):
    assert_rejects(
        checks.check_write_projector, wrong, diagnosis=" < d_head (row "
    )  # the first W_O whose rows are dependent: which rows is drawn
    with checks.fixed_seed(0), pytest.raises(checks.CheckFailed) as info:
        checks.check_write_projector(_qr_projector)
    assert "right for every W_O of full rank" in str(info.value)
    assert "your matrix has trace 5" in str(info.value)


def _qr_cut_to_the_rank(W_O):
    Q, _ = torch.linalg.qr(W_O.T)  # [d_model, d_head]
    rank = int(torch.linalg.matrix_rank(W_O))
    return Q[:, :rank] @ Q[:, :rank].T  # spans the first `rank` rows only


def _fixed_threshold(threshold, dtype=torch.float32):
    def write_projector(W_O):
        _, S, Vh = torch.linalg.svd(W_O.to(dtype), full_matrices=False)
        basis = Vh[S > threshold]
        return (basis.T @ basis).float()

    return write_projector


def _relative_threshold(rtol):
    """A tolerance relative to the largest singular value, but far coarser than rounding: it
    drops a real direction that is much weaker than the others."""

    def write_projector(W_O):
        _, S, Vh = torch.linalg.svd(W_O, full_matrices=False)
        basis = Vh[S > rtol * S.max()]
        return basis.T @ basis

    return write_projector


@pytest.mark.parametrize(
    "wrong, diagnosis",
    [
        (_qr_cut_to_the_rank, "right for every W_O of full rank, but not here: your matrix "
         "projects onto"),
        (_qr_cut_to_the_rank, "yet not onto W_O's row space. Its rows are dependent here (row "),
        (_qr_cut_to_the_rank, "so its first rank(W_O) rows do not span its row space"),
        (_fixed_threshold(1e-3), "with entries about 1e-8, of full rank: your matrix has trace 0"),
        (_fixed_threshold(1e-6), "This W_O's entries are all small (up to "),
        (_fixed_threshold(1e-10), " < d_head (row "),  # float32 rounding noise at scale 1 counts
        (_fixed_threshold(1e-10), "To count the rank, keep only the directions whose singular "
         "values are not rounding noise"),
        (_fixed_threshold(1e-13, torch.float64), "with entries about 1e4"),
        (_fixed_threshold(1e-13, torch.float64), "A W_O with entries this large (up to "),
        (lambda W_O: torch.linalg.pinv(W_O, atol=1e-6) @ W_O, "entries are all small"),
        (_relative_threshold(0.1), "one of whose singular values is 0.003 × the largest: your "
         "matrix has trace"),
        (_relative_threshold(0.01), "To count the rank, keep only the directions whose singular "
         "values are not rounding noise"),
    ],
)  # fmt: skip
def test_write_projector_rejects_a_rank_counted_against_a_fixed_threshold(wrong, diagnosis):
    assert_rejects(checks.check_write_projector, wrong, diagnosis=diagnosis)


def test_write_projector_explains_a_singular_inverse():
    def via_inverse(W_O):
        if torch.linalg.matrix_rank(W_O) < W_O.shape[0]:  # what inv(W_O @ W_O.T) raises then
            raise torch.linalg.LinAlgError("linalg.inv: The diagonal element 4 is zero")
        return W_O.T @ torch.linalg.inv(W_O @ W_O.T) @ W_O

    assert_rejects(
        checks.check_write_projector,
        via_inverse,
        diagnosis="W_O W_Oᵀ is singular when W_O's rows are dependent, so it has no inverse",
    )


def test_rotate_residual_draws_new_models_and_rotations_at_each_check():
    seen = set()

    def spy(model, R):
        seen.add((model.cfg.d_model, float(R.sum())))
        return rotate_reference(model, R)

    checks.check_rotate_residual(spy)
    checks.check_rotate_residual(spy)
    assert len(seen) == 12  # three models, two rotations each, per check; none repeated
