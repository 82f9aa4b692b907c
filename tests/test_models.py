import math
from pathlib import Path

import pytest
import torch

from helpers.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from helpers.models import AttnOnlyTransformer, HookedTransformerConfig, next_token_loss
from tests.conftest import make_model, random_tokens


def brute_force_logits(model: AttnOnlyTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """The forward pass written with explicit loops over heads and positions, from the paper's
    equations, as an independent reference."""
    cfg = model.cfg
    out = []
    for seq in tokens:
        n = len(seq)
        resid = model.W_E[seq].clone()  # [pos, d_model]
        pos = model.W_pos[:n]
        if cfg.positional_embedding_type == "standard":
            resid = resid + pos
        for block in model.blocks:
            attn = block.attn
            qk_in = resid + pos if cfg.positional_embedding_type == "shortformer" else resid
            new = resid.clone()
            for h in range(cfg.n_heads):
                q, k, v = qk_in @ attn.W_Q[h], qk_in @ attn.W_K[h], resid @ attn.W_V[h]
                if attn.b_Q is not None:
                    q, k, v = q + attn.b_Q[h], k + attn.b_K[h], v + attn.b_V[h]
                if attn.smear_logit is not None:  # Olsson et al. (2022), smeared keys
                    s = torch.sigmoid(attn.smear_logit[h])
                    k = torch.stack([k[0]] + [s * k[j] + (1 - s) * k[j - 1] for j in range(1, n)])
                for i in range(n):
                    scores = torch.stack(
                        [q[i] @ k[j] / math.sqrt(cfg.d_head) for j in range(i + 1)]
                    )
                    weights = scores.softmax(0)
                    z = sum(weights[j] * v[j] for j in range(i + 1))
                    new[i] = new[i] + z @ attn.W_O[h]
            if attn.b_O is not None:
                new = new + attn.b_O
            resid = new
        logits = resid @ model.W_U
        if model.unembed.b_U is not None:
            logits = logits + model.unembed.b_U
        out.append(logits)
    return torch.stack(out)


def randomise_smear(model: AttnOnlyTransformer, seed: int = 3) -> AttnOnlyTransformer:
    """Give each head its own alpha (all start at 0), so that a mix-up of heads would show."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.smear_logit.copy_(2 * torch.randn(model.cfg.n_heads, generator=gen))
    return model


def _model_with_everything_set(positions, n_layers, use_bias, smeared, bias_scale, bias_seed):
    """A model whose biases and smearing (which start at zero) are random, so that they matter."""
    model = make_model(
        n_layers=n_layers, positional_embedding_type=positions, use_bias=use_bias,
        smeared_keys=smeared,
    )  # fmt: skip
    if smeared:
        randomise_smear(model)
    if use_bias:
        gen = torch.Generator().manual_seed(bias_seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.split(".")[-1].startswith("b_"):
                    p.copy_(bias_scale * torch.randn(p.shape, generator=gen))
    return model


@pytest.mark.parametrize("positions", ["shortformer", "standard"])
@pytest.mark.parametrize("n_layers", [0, 1, 2])
@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("smeared", [False, True])
def test_forward_matches_brute_force(positions, n_layers, use_bias, smeared):
    model = _model_with_everything_set(positions, n_layers, use_bias, smeared, 1.0, 1)
    tokens = random_tokens(model, batch=2, pos=7)
    with torch.no_grad():
        reference = brute_force_logits(model, tokens)
        assert torch.allclose(model(tokens), reference, atol=1e-4)  # the fast path
        assert torch.allclose(model(tokens, want_result=True), reference, atol=1e-4)  # hooked


@pytest.mark.parametrize("positions", ["shortformer", "standard"])
@pytest.mark.parametrize("n_layers", [0, 1, 2])
@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("smeared", [False, True])
@pytest.mark.parametrize("threads", [1, 2])  # the fast path's attention kernel depends on it
def test_fast_path_and_hooked_path_agree(
    positions, n_layers, use_bias, smeared, threads, monkeypatch
):
    # the count the kernel is chosen by, without starting threads (two threads beside the
    # suite's other worker would wait for each other: a slow test, not a different result)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    _fast_path_and_hooked_path_agree(positions, n_layers, use_bias, smeared)


def _fast_path_and_hooked_path_agree(positions, n_layers, use_bias, smeared):
    model = _model_with_everything_set(positions, n_layers, use_bias, smeared, 0.1, 2)
    tokens = random_tokens(model, batch=3, pos=model.cfg.n_ctx)
    with torch.no_grad():
        fast = model(tokens)
        hooked, cache = model.run_with_cache(tokens)
        assert not model.hooks_attached()
        assert (fast - hooked).abs().max() <= 1e-5
        assert (fast - model.forward_fused(tokens)).abs().max() == 0
    # gradients agree too: training takes the fast path
    params = list(model.parameters())  # W_pos is unused by a zero-layer shortformer model
    fast_grads = torch.autograd.grad(model(tokens).square().mean(), params, allow_unused=True)
    hooked_grads = torch.autograd.grad(
        model(tokens, want_result=True).square().mean(), params, allow_unused=True
    )
    for a, b in zip(fast_grads, hooked_grads, strict=True):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-6, rtol=1e-4)


def test_a_hook_switches_to_the_hooked_path(model, tokens):
    seen = []
    with model.hooks([("blocks.0.attn.hook_pattern", lambda x, hook: seen.append(hook.name))]):
        assert model.hooks_attached()
        model(tokens)
    assert seen == ["blocks.0.attn.hook_pattern"] and not model.hooks_attached()
    every_pattern = lambda name: name.endswith("hook_pattern")  # noqa: E731
    with model.hooks([(every_pattern, lambda x, hook: torch.zeros_like(x))]):
        zeroed = model(tokens)  # every position attends nowhere: the heads add nothing
    assert torch.allclose(zeroed, model.unembed(model.embed(tokens)), atol=1e-6)


def test_parameter_names_and_shapes_follow_transformer_lens():
    model = make_model(n_layers=2)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {
        "embed.W_E": (13, 16),
        "pos_embed.W_pos": (10, 16),
        "blocks.0.attn.W_Q": (3, 16, 4),
        "blocks.0.attn.W_K": (3, 16, 4),
        "blocks.0.attn.W_V": (3, 16, 4),
        "blocks.0.attn.W_O": (3, 4, 16),
        "blocks.1.attn.W_Q": (3, 16, 4),
        "blocks.1.attn.W_K": (3, 16, 4),
        "blocks.1.attn.W_V": (3, 16, 4),
        "blocks.1.attn.W_O": (3, 4, 16),
        "unembed.W_U": (16, 13),
    }
    assert model.W_Q.shape == (2, 3, 16, 4) and model.W_O.shape == (2, 3, 4, 16)


def test_biases_are_off_by_default_and_named_like_transformer_lens_when_on():
    assert not [k for k in make_model().state_dict() if ".b_" in k]
    keys = set(make_model(n_layers=1, use_bias=True).state_dict())
    assert {"blocks.0.attn.b_Q", "blocks.0.attn.b_K", "blocks.0.attn.b_V", "blocks.0.attn.b_O",
            "unembed.b_U"} <= keys  # fmt: skip


def test_shortformer_positions_never_enter_the_residual_stream(model, tokens):
    _, cache = model.run_with_cache(tokens)
    assert torch.equal(cache["blocks.0.hook_resid_pre"], cache["hook_embed"])
    standard = make_model(positional_embedding_type="standard")
    _, cache = standard.run_with_cache(tokens)
    assert torch.allclose(
        cache["blocks.0.hook_resid_pre"], cache["hook_embed"] + cache["hook_pos_embed"]
    )


def test_bos_and_causality_later_tokens_do_not_change_earlier_logits(model, tokens):
    changed = tokens.clone()
    changed[:, 6:] = (changed[:, 6:] + 1) % model.cfg.d_vocab
    with torch.no_grad():
        a, b = model(tokens), model(changed)
    assert torch.allclose(a[:, :6], b[:, :6])
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def test_attention_is_scaled_by_sqrt_d_head(model, tokens):
    _, cache = model.run_with_cache(tokens)
    q, k = cache["blocks.0.attn.hook_q"], cache["blocks.0.attn.hook_k"]
    raw = torch.einsum("bqhd,bkhd->bhqk", q, k)
    scores = cache["blocks.0.attn.hook_attn_scores"]
    lower = torch.ones(10, 10, dtype=torch.bool).tril()
    assert torch.allclose(scores[..., lower], raw[..., lower] / 2.0)  # d_head = 4
    assert torch.isinf(scores[..., ~lower]).all()
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert torch.allclose(pattern.sum(-1), torch.ones(()))


def test_same_seed_same_weights_and_no_global_rng_use():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b = make_model(seed=5), make_model(seed=5)
    after = torch.rand(1)
    assert torch.equal(before, after)  # building models did not consume the global RNG
    for (_, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(p, q)
    assert not torch.equal(make_model(seed=6).W_E, a.W_E)


def test_run_with_cache_names_and_filter(model, tokens):
    logits, cache = model.run_with_cache(tokens)
    assert torch.allclose(logits, model(tokens), atol=1e-5)
    assert cache["blocks.1.attn.hook_pattern"].shape == (3, 3, 10, 10)
    assert cache["blocks.0.attn.hook_result"].shape == (3, 10, 3, 16)
    assert cache["blocks.0.attn.hook_z"].shape == (3, 10, 3, 4)
    _, only = model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_pattern")
    assert list(only) == ["blocks.0.attn.hook_pattern"]
    with pytest.raises(ValueError, match="no hook named 'blocks.9.attn.hook_pattern'"):
        model.run_with_cache(tokens, names_filter="blocks.9.attn.hook_pattern")


def test_hooks_replace_activations_and_are_removed_afterwards(model, tokens):
    clean = model(tokens)

    def ablate_head_1(result, hook):
        result = result.clone()
        result[:, :, 1] = 0.0
        return result

    ablated, cache = model.run_with_cache(
        tokens, fwd_hooks=[("blocks.1.attn.hook_result", ablate_head_1)]
    )
    _, clean_cache = model.run_with_cache(tokens)
    expected = clean - clean_cache["blocks.1.attn.hook_result"][:, :, 1] @ model.W_U
    assert torch.allclose(ablated, expected, atol=1e-5)
    assert torch.equal(cache["blocks.1.attn.hook_result"][:, :, 1], torch.zeros(3, 10, 16))
    assert torch.allclose(model(tokens), clean)  # hooks gone
    assert all(not p.fns for p in model.hook_dict.values())


def test_frozen_attention_patterns(model, tokens):
    """Replacing patterns with those recorded on the same input changes nothing; with patterns
    from another input, the logits become linear in the input embeddings (framework paper)."""
    _, cache = model.run_with_cache(tokens)
    frozen = [
        (
            f"blocks.{layer}.attn.hook_pattern",
            lambda x, hook, layer=layer: cache[f"blocks.{layer}.attn.hook_pattern"],
        )
        for layer in range(2)
    ]
    assert torch.allclose(model.run_with_hooks(tokens, frozen), model(tokens), atol=1e-5)

    def run_from_embeddings(x0):
        return model.run_with_hooks(tokens, [*frozen, ("hook_embed", lambda x, hook: x0)])

    e1, e2 = torch.randn(3, 10, 16), torch.randn(3, 10, 16)
    zero = run_from_embeddings(torch.zeros(3, 10, 16))  # pos embeddings feed only frozen QK
    lhs = run_from_embeddings(2 * e1 + 3 * e2) - zero
    rhs = 2 * (run_from_embeddings(e1) - zero) + 3 * (run_from_embeddings(e2) - zero)
    assert torch.allclose(lhs, rhs, atol=1e-4)


def test_hook_returning_wrong_shape_is_a_clear_error(model, tokens):
    with pytest.raises(
        ValueError,
        match=r"hook on blocks.0.attn.hook_pattern must return None or a tensor of shape \(3, 3, 10, 10\)",
    ):
        model.run_with_hooks(tokens, [("blocks.0.attn.hook_pattern", lambda x, hook: x[0])])
    assert all(not p.fns for p in model.hook_dict.values())  # removed despite the error


@pytest.mark.parametrize(
    "bad, error, message",
    [
        (
            torch.tensor([[0, 13]]),
            ValueError,
            r"token id 13 is outside the vocabulary: ids must be in 0..12",
        ),
        (torch.tensor([[0, -1]]), ValueError, r"token id -1 is outside the vocabulary"),
        (torch.zeros(1, 11, dtype=torch.long), ValueError, r"length 11 is longer than n_ctx=10"),
        (torch.zeros(1, 4), TypeError, r"integer dtype .* got torch.float32"),
        ([[0, 1]], TypeError, r"must be a torch.Tensor"),
        (torch.zeros(1, 2, 3, dtype=torch.long), ValueError, r"shape \[batch, pos\] or \[pos\]"),
    ],
)
def test_bad_tokens_are_clear_errors(model, bad, error, message):
    with pytest.raises(error, match=message):
        model(bad)


def test_one_dimensional_tokens_are_one_sequence(model, tokens):
    assert torch.allclose(model(tokens[0]), model(tokens[:1]))


def test_check_head_names_the_allowed_range(model):
    assert model.check_head(1, 2) == (1, 2)
    with pytest.raises(ValueError, match=r"layer must be an int in 0..1, got 2"):
        model.check_head(2, 0)
    with pytest.raises(ValueError, match=r"head must be an int in 0..2, got 3"):
        model.check_head(0, 3)
    with pytest.raises(ValueError, match="zero-layer model has no attention heads"):
        make_model(n_layers=0).check_head(0, 0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"d_model": 0}, "d_model must be a positive int"),
        ({"n_heads": 0}, "needs n_heads >= 1"),
        ({"positional_embedding_type": "rotary"}, "'shortformer' or 'standard'"),
        ({"initializer_range": -1.0}, "initializer_range must be a finite number > 0"),
        ({"n_ctx": 2.5}, "n_ctx must be a positive int"),
    ],
)
def test_bad_config_is_a_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_model(**overrides)


def test_config_is_frozen_and_round_trips():
    cfg = make_model().cfg
    with pytest.raises(AttributeError):
        cfg.d_model = 3
    assert HookedTransformerConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown config fields \\['d_mlp'\\]"):
        HookedTransformerConfig.from_dict({**cfg.to_dict(), "d_mlp": 4})


def test_head_indices_may_be_what_argmax_returns(model):
    import numpy as np

    scores = torch.zeros(2, 3)
    scores[1, 2] = 1.0
    flat = scores.flatten().argmax()  # a 0-d tensor
    layer, head = flat // 3, flat % 3
    assert model.check_head(layer, head) == (1, 2)
    assert model.check_head(np.int64(0), np.int64(1)) == (0, 1)
    for bad in (1.0, True, torch.tensor([1, 2]), "1"):
        with pytest.raises(ValueError, match="head must be an int in 0..2"):
            model.check_head(0, bad)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"initializer_range": float("inf")}, "initializer_range must be a finite number > 0"),
        ({"initializer_range": float("nan")}, "initializer_range must be a finite number > 0"),
        ({"use_bias": "no"}, "use_bias must be True or False, got 'no'"),
        ({"seed": 1.5}, "seed must be an int"),
        ({"smeared_keys": 1}, "smeared_keys must be True or False, got 1"),
        ({"smeared_keys": "yes"}, "smeared_keys must be True or False, got 'yes'"),
    ],
)
def test_config_values_that_would_give_garbage_are_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        make_model(**overrides)


@pytest.mark.parametrize("n_layers", [0, 1, 2])
@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("smeared", [False, True])
def test_parameter_shapes_without_building_the_model(n_layers, use_bias, smeared):
    model = make_model(n_layers=n_layers, use_bias=use_bias, smeared_keys=smeared)
    assert model.cfg.parameter_shapes() == {
        k: tuple(v.shape) for k, v in model.state_dict().items()
    }


def test_check_finite_names_the_weight(model):
    model.check_finite()
    with torch.no_grad():
        model.blocks[1].attn.W_V[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"weight blocks.1.attn.W_V holds NaN values"):
        model.check_finite()
    with torch.no_grad():
        model.blocks[1].attn.W_V[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"W_V holds infinite values"):
        model.check_finite()


def test_next_token_loss_needs_two_positions_and_matching_shapes():
    with pytest.raises(ValueError, match="need at least 2 positions"):
        next_token_loss(torch.zeros(2, 1, 5), torch.zeros(2, 1, dtype=torch.long))
    with pytest.raises(ValueError, match="same batch and pos"):
        next_token_loss(torch.zeros(2, 4, 5), torch.zeros(4, dtype=torch.long))


# -- smeared keys (Olsson et al. 2022, "Argument 2: architectural requirements") ----------------


def test_smeared_keys_add_one_named_parameter_per_layer_and_nothing_else():
    plain, smeared = make_model(), make_model(smeared_keys=True)
    assert plain.blocks[0].attn.smear_logit is None
    shapes = {k: tuple(v.shape) for k, v in smeared.state_dict().items()}
    extra = {"blocks.0.attn.smear_logit": (3,), "blocks.1.attn.smear_logit": (3,)}
    assert shapes == {k: tuple(v.shape) for k, v in plain.state_dict().items()} | extra
    for name in extra:
        assert torch.equal(smeared.state_dict()[name], torch.zeros(3))  # sigmoid = 1/2: even mix


def test_smeared_keys_follow_the_definition_position_by_position():
    """k'_j = sigmoid(alpha^h) k_j + (1 - sigmoid(alpha^h)) k_{j-1}, k'_0 = k_0; the unsmeared
    keys come from the plain model of the same seed, which shares every other weight."""
    plain = make_model(n_layers=1, use_bias=True)
    smeared = randomise_smear(make_model(n_layers=1, use_bias=True, smeared_keys=True))
    for name, p in plain.named_parameters():
        assert torch.equal(p, smeared.get_parameter(name))
    tokens = random_tokens(plain)
    _, raw = plain.run_with_cache(tokens)
    _, cache = smeared.run_with_cache(tokens)
    k, k_smeared = raw["blocks.0.attn.hook_k"], cache["blocks.0.attn.hook_k"]
    keep = torch.sigmoid(smeared.blocks[0].attn.smear_logit)
    assert torch.equal(k_smeared[:, 0], k[:, 0])  # the first position is unchanged
    for j in range(1, tokens.shape[1]):
        for h in range(3):
            expected = keep[h] * k[:, j, h] + (1 - keep[h]) * k[:, j - 1, h]
            assert torch.allclose(k_smeared[:, j, h], expected, atol=1e-6)
    for name in ("hook_q", "hook_v"):  # queries and values are not smeared
        assert torch.equal(cache[f"blocks.0.attn.{name}"], raw[f"blocks.0.attn.{name}"])
    # the cached (smeared) keys are the ones the scores use
    q = cache["blocks.0.attn.hook_q"]
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k_smeared) / 2.0  # d_head = 4
    lower = torch.ones(10, 10, dtype=torch.bool).tril()
    assert torch.allclose(cache["blocks.0.attn.hook_attn_scores"][..., lower], scores[..., lower])


def test_a_smeared_key_carries_the_previous_token():
    """Changing the token at position 4 changes the keys at 4 and, only when smeared, at 5: what
    lets one layer match "the token before this key" (an induction head's key)."""
    tokens = random_tokens(make_model(), batch=1)
    changed = tokens.clone()
    changed[0, 4] = (changed[0, 4] + 1) % 13
    for smeared, moved in ((False, [4]), (True, [4, 5])):
        model = make_model(n_layers=1, smeared_keys=smeared)
        _, a = model.run_with_cache(tokens, names_filter="blocks.0.attn.hook_k")
        _, b = model.run_with_cache(changed, names_filter="blocks.0.attn.hook_k")
        diff = (a["blocks.0.attn.hook_k"] - b["blocks.0.attn.hook_k"]).abs().amax(dim=(0, 2, 3))
        assert (diff > 1e-4).nonzero().flatten().tolist() == moved
    # and by gradient: the smeared key at 5 depends on the embedding at 4
    model = make_model(n_layers=1, smeared_keys=True)
    embed = model.embed(tokens).detach().requires_grad_()
    keys = []
    model.run_with_hooks(
        tokens,
        [
            ("hook_embed", lambda x, hook: embed),
            ("blocks.0.attn.hook_k", lambda x, h: keys.append(x)),
        ],
    )
    (grad,) = torch.autograd.grad(keys[0][0, 5].sum(), embed)
    assert grad[0, 4].abs().max() > 1e-4 and grad[0, 6:].abs().max() == 0


def test_smeared_models_are_seed_deterministic_and_share_the_plain_models_weights():
    a, b = make_model(seed=5, smeared_keys=True), make_model(seed=5, smeared_keys=True)
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(p, q), name
    plain = make_model(seed=5).state_dict()
    assert all(torch.equal(plain[k], v) for k, v in a.state_dict().items() if k in plain)


def test_smeared_keys_in_the_config_dict_only_when_on():
    plain = make_model().cfg
    assert "smeared_keys" not in plain.to_dict()  # a plain model's checkpoint is as before
    smeared = make_model(smeared_keys=True).cfg
    assert smeared.to_dict()["smeared_keys"] is True
    assert HookedTransformerConfig.from_dict(smeared.to_dict()) == smeared
    assert HookedTransformerConfig.from_dict(plain.to_dict()) == plain


def test_a_smeared_checkpoint_round_trips_and_a_plain_one_is_unchanged(tmp_path):
    smeared = randomise_smear(make_model(smeared_keys=True))
    path = save_checkpoint(tmp_path / "s.pt", smeared, {}, {})
    payload = torch.load(path, weights_only=True)
    assert payload["config"]["smeared_keys"] is True
    ckpt = load_checkpoint(path)
    tokens = random_tokens(smeared)
    assert ckpt.cfg == smeared.cfg
    assert torch.equal(ckpt.model.blocks[1].attn.smear_logit, smeared.blocks[1].attn.smear_logit)
    assert torch.equal(ckpt.model(tokens), smeared(tokens))

    plain = make_model()
    old = torch.load(save_checkpoint(tmp_path / "p.pt", plain, {}, {}), weights_only=True)
    assert "smeared_keys" not in old["config"]  # what checkpoints written before it hold
    assert not [k for k in old["state_dict"] if "smear" in k]
    assert load_checkpoint(tmp_path / "p.pt").cfg == plain.cfg  # loads as a plain model
    course = Path(__file__).resolve().parent.parent / "data" / "induction_1l.pt"
    assert not load_checkpoint(course).cfg.smeared_keys  # a checkpoint from before the field

    payload["config"]["smeared_keys"] = False  # smeared weights under a plain config
    torch.save(payload, tmp_path / "mixed.pt")
    with pytest.raises(CheckpointError, match=r"unexpected keys \['blocks.0.attn.smear_logit'"):
        load_checkpoint(tmp_path / "mixed.pt")


def test_check_finite_names_the_smear_logit():
    model = make_model(smeared_keys=True)
    model.check_finite()
    with torch.no_grad():
        model.blocks[0].attn.smear_logit[1] = float("nan")
    with pytest.raises(ValueError, match=r"weight blocks.0.attn.smear_logit holds NaN values"):
        model.check_finite()


@pytest.mark.parametrize("threads", [1, 2])  # both attention kernels of the fast path
def test_a_float64_model_runs_every_path(threads, monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    model = make_model(n_layers=2).double()
    tokens = random_tokens(model, batch=2, pos=7)
    with torch.no_grad():
        fast = model(tokens)
        hooked, cache = model.run_with_cache(tokens)
    assert fast.dtype == hooked.dtype == cache["blocks.1.attn.hook_attn_scores"].dtype
    assert fast.dtype == torch.float64 and (fast - hooked).abs().max() <= 1e-10
