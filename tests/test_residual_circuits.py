"""helpers.circuits.residual: the residual stream's basis, subspaces, virtual weights, bandwidth."""

import pytest
import torch

from helpers import circuits
from helpers.checkpoints import load_checkpoint
from helpers.recipes import checkpoint_path
from tests.conftest import make_model, random_tokens


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens)


# ---- claim 29: no privileged basis ----------------------------------------------------------------
def test_random_rotation_is_orthogonal_seeded_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    R = circuits.random_rotation(16, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert R.shape == (16, 16) and R.dtype == torch.float32
    assert torch.allclose(R.T @ R, torch.eye(16), atol=1e-5)
    assert torch.equal(R, circuits.random_rotation(16, seed=3))
    assert not torch.allclose(R, circuits.random_rotation(16, seed=4))
    with pytest.raises(ValueError, match="d must be a positive int, got 0"):
        circuits.random_rotation(0, seed=0)


def test_random_rotations_have_no_preferred_direction():
    # Haar: the mean of R over many draws is 0 (without the sign fix, QR's diagonal is biased)
    mean = torch.stack([circuits.random_rotation(4, seed=s) for s in range(200)]).mean(0)
    assert mean.abs().max() < 0.15


@pytest.mark.parametrize("n_layers", [0, 1, 2])
@pytest.mark.parametrize("positions", ["shortformer", "standard"])
@pytest.mark.parametrize("extra", [{}, {"use_bias": True}, {"smeared_keys": True}])
def test_rotating_the_residual_stream_leaves_the_logits_unchanged(n_layers, positions, extra):
    model = make_model(n_layers=n_layers, positional_embedding_type=positions, **extra)
    with torch.no_grad():  # non-zero biases and smearing, so that they would show a mistake
        for name, p in model.named_parameters():
            if name.split(".")[-1].startswith("b_") or name.endswith("smear_logit"):
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    before = {name: p.clone() for name, p in model.state_dict().items()}
    tokens = random_tokens(model)
    rotated = circuits.rotate_residual(model, circuits.random_rotation(16, seed=0))
    assert rotated is not model
    assert (_logits(rotated, tokens) - _logits(model, tokens)).abs().max() <= 1e-4
    assert (rotated.W_E - model.W_E).abs().max() > 0.1  # the coordinates did change
    for name, p in model.state_dict().items():  # the input model is untouched
        assert torch.equal(p, before[name]), name


def test_rotate_residual_refuses_a_matrix_that_is_not_a_rotation():
    model = make_model()
    with pytest.raises(ValueError, match=r"square matrix \[d_model, d_model\], got \(16, 4\)"):
        circuits.rotate_residual(model, torch.zeros(16, 4))
    with pytest.raises(
        ValueError, match=r"must be \[16, 16\] \(the model's d_model\), got \(8, 8\)"
    ):
        circuits.rotate_residual(model, torch.eye(8))
    with pytest.raises(ValueError, match="R must be orthogonal"):
        circuits.rotate_residual(model, 2 * torch.eye(16))


# ---- claim 30: subspaces and virtual weights -----------------------------------------------------
def test_write_subspace_is_an_orthonormal_basis_of_w_o_rows():
    model = make_model()
    for layer in range(2):
        for head in range(3):
            basis = circuits.write_subspace(model, layer, head)
            W_O = model.blocks[layer].attn.W_O[head]
            assert basis.shape == (4, 16)  # rank d_head
            assert torch.allclose(basis @ basis.T, torch.eye(4), atol=1e-5)
            assert torch.allclose(W_O @ circuits.projector(basis), W_O, atol=1e-5)  # spans W_O


def test_row_space_counts_the_rank_with_a_tolerance():
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(6, 2, generator=gen) @ torch.randn(2, 10, generator=gen)  # rank 2
    assert circuits.row_space(W).shape == (2, 10)
    assert circuits.row_space(torch.zeros(3, 10)).shape == (0, 10)


def test_projector_is_symmetric_and_idempotent():
    P = circuits.projector(circuits.write_subspace(make_model(), 1, 2))
    assert torch.allclose(P, P.T, atol=1e-6)
    assert torch.allclose(P @ P, P, atol=1e-5)
    assert torch.isclose(torch.trace(P), torch.tensor(4.0), atol=1e-4)
    with pytest.raises(ValueError, match="rows must be orthonormal"):
        circuits.projector(2 * torch.eye(3, 16))


@pytest.mark.parametrize("kind", circuits.READ_KINDS)
def test_virtual_weight_is_what_the_reader_reads_of_the_writers_z(kind):
    model = make_model(n_layers=3)
    _, cache = model.run_with_cache(random_tokens(model))
    for writer, reader in [((0, 1), (1, 2)), ((0, 0), (2, 1)), ((1, 2), (2, 0))]:
        z = cache[f"blocks.{writer[0]}.attn.hook_z"][:, :, writer[1]]  # [batch, pos, d_head]
        W_O = model.blocks[writer[0]].attn.W_O[writer[1]]
        W_read = getattr(model.blocks[reader[0]].attn, f"W_{kind.upper()}")[reader[1]]
        virtual = circuits.virtual_weight(model, writer, reader, kind)
        assert virtual.shape == (4, 4)
        assert ((z @ W_O) @ W_read - z @ virtual).abs().max() <= 1e-4


def test_virtual_weight_refuses_bad_heads_and_kinds():
    model = make_model()
    with pytest.raises(ValueError, match=r"writer's layer must be in 0..0, got writer \(1, 0\)"):
        circuits.virtual_weight(model, (1, 0), (1, 1), "k")
    with pytest.raises(ValueError, match="a reader in layer 0 reads no head's write"):
        circuits.virtual_weight(model, (0, 0), (0, 1), "k")
    with pytest.raises(ValueError, match=r"kind must be one of \('q', 'k', 'v'\).*got 'o'"):
        circuits.virtual_weight(model, (0, 0), (1, 1), "o")
    with pytest.raises(ValueError, match=r"head must be an int in 0..2, got 3"):
        circuits.virtual_weight(model, (0, 3), (1, 1), "q")
    with pytest.raises(ValueError, match="writer must be a \\(layer, head\\) pair"):
        circuits.virtual_weight(model, 0, (1, 1), "q")


# ---- claim 31: reading what was written ----------------------------------------------------------
def test_read_share_inside_outside_and_random():
    gen = torch.Generator().manual_seed(0)
    basis = torch.eye(16)[:4]  # the first four coordinates
    inside = torch.zeros(16, 4)
    inside[:4] = torch.randn(4, 4, generator=gen)
    outside = torch.zeros(16, 4)
    outside[4:] = torch.randn(12, 4, generator=gen)
    assert circuits.read_share(inside, basis) == pytest.approx(1.0)
    assert circuits.read_share(outside, basis) == pytest.approx(0.0)
    assert circuits.read_share(inside + outside, basis) == pytest.approx(
        float(inside.square().sum() / (inside + outside).square().sum()), rel=1e-5
    )
    with pytest.raises(ValueError, match="d_model=16 columns"):
        circuits.read_share(inside, torch.eye(8)[:4])
    with pytest.raises(ValueError, match="W_read is zero"):
        circuits.read_share(torch.zeros(16, 4), basis)


def test_random_reads_of_random_subspaces_give_the_random_share():
    model = make_model(d_model=16, d_head=4)
    gen = torch.Generator().manual_seed(0)
    shares = [
        circuits.read_share(
            torch.randn(16, 4, generator=gen), circuits.row_space(torch.randn(4, 16, generator=gen))
        )
        for _ in range(200)
    ]
    assert sum(shares) / len(shares) == pytest.approx(circuits.random_share(model), abs=0.02)
    assert circuits.random_share(model) == 0.25


@pytest.mark.parametrize("positions", ["shortformer", "standard"])
def test_read_shares_names_every_earlier_writer(positions):
    model = make_model(n_layers=3, positional_embedding_type=positions)
    heads = ["L0H0", "L0H1", "L0H2", "L1H0", "L1H1", "L1H2"]
    assert list(circuits.read_shares(model, 2, 1, "k")) == [*heads, "embed", "pos"]
    assert list(circuits.read_shares(model, 0, 0, "q")) == ["embed", "pos"]
    v = list(circuits.read_shares(model, 1, 0, "v"))
    assert v == ["L0H0", "L0H1", "L0H2", "embed"] + (["pos"] if positions == "standard" else [])
    shares = circuits.read_shares(model, 2, 1, "q")
    assert all(0 <= s <= 1 + 1e-6 for s in shares.values())
    assert shares["embed"] < 1 - 1e-3  # d_vocab 13 < d_model 16: W_E spans 13 dimensions
    wide = make_model(d_vocab=20, positional_embedding_type=positions)
    assert circuits.read_shares(wide, 1, 0, "q")["embed"] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match=r"layer must be an int in 0..2, got 3"):
        circuits.read_shares(model, 3, 0, "q")


def test_read_shares_of_a_head_reading_a_writer_exactly():
    model = make_model()
    with torch.no_grad():  # L1H0's keys read exactly L0H2's write subspace
        model.blocks[1].attn.W_K[0] = model.blocks[0].attn.W_O[2].T
    shares = circuits.read_shares(model, 1, 0, "K")
    assert shares["L0H2"] == pytest.approx(1.0, abs=1e-5)


# ---- bandwidth -------------------------------------------------------------------------------------
def test_write_overlaps_are_symmetric_with_ones_on_the_diagonal():
    model = make_model()
    overlaps, names = circuits.write_overlaps(model)
    assert names == ["L0H0", "L0H1", "L0H2", "L1H0", "L1H1", "L1H2", "pos"]
    assert overlaps.shape == (7, 7)
    assert torch.allclose(overlaps, overlaps.T)
    assert torch.allclose(overlaps.diagonal(), torch.ones(7), atol=1e-5)
    assert ((overlaps >= 0) & (overlaps <= 1 + 1e-5)).all()
    with pytest.raises(ValueError, match="zero-layer model"):
        circuits.write_overlaps(make_model(n_layers=0, n_heads=0))


def test_overlap_of_random_subspaces_matches_its_baseline():
    gen = torch.Generator().manual_seed(0)
    for dim_a, dim_b in [(4, 4), (4, 10)]:
        overlaps = [
            circuits.subspace_overlap(
                circuits.row_space(torch.randn(dim_a, 16, generator=gen)),
                circuits.row_space(torch.randn(dim_b, 16, generator=gen)),
            )
            for _ in range(150)
        ]
        expected = circuits.random_overlap(dim_a, dim_b, 16)
        assert sum(overlaps) / len(overlaps) == pytest.approx(expected, abs=0.02)
    basis = torch.eye(16)
    assert circuits.subspace_overlap(basis[:4], basis[4:8]) == 0.0
    assert circuits.subspace_overlap(basis[:4], basis[:8]) == 1.0


def test_erasure_of_a_head_that_writes_back_minus_the_writers_output():
    model = make_model()
    basis = circuits.write_subspace(model, 0, 0)  # [4, 16]
    with torch.no_grad():  # L1H1 reads L0H0's write and writes it back negated: W_V W_O = -P
        model.blocks[1].attn.W_V[1] = -basis.T
        model.blocks[1].attn.W_O[1] = basis
    assert circuits.erasure(model, (0, 0), (1, 1)) == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():
        model.blocks[1].attn.W_V[1] *= -1  # copies instead
    assert circuits.erasure(model, (0, 0), (1, 1)) == pytest.approx(-1.0, abs=1e-5)


# ---- on the course's trained model ---------------------------------------------------------------
def test_induction_heads_keys_read_the_previous_token_heads_write():
    """Claim 31 on induction_2l: L0H0 is its previous-token head, L1H0/H2/H3 its induction heads
    (chapter 04). Their W_K lies far more inside L0H0's write subspace than a random subspace's
    share; their W_Q and W_V do not."""
    model = load_checkpoint(checkpoint_path("induction_2l")).model
    random, prev_token = circuits.random_share(model), circuits.write_subspace(model, 0, 0)
    for head in (0, 2, 3):
        attn = model.blocks[1].attn
        shares = {
            kind: circuits.read_share(getattr(attn, f"W_{kind.upper()}")[head], prev_token)
            for kind in "qkv"
        }
        assert shares["k"] >= 2 * random
        assert shares["q"] <= 1.2 * random and shares["v"] <= 1.2 * random


def test_random_shares_are_each_writers_dimension_over_d_model():
    model = make_model(n_layers=3, d_model=24, n_heads=2, d_head=4, n_ctx=6, d_vocab=10)
    baselines = circuits.random_shares(model, 2)
    assert set(baselines) >= set(circuits.read_shares(model, 2, 1, "q"))
    assert baselines == {"L0H0": 4 / 24, "L0H1": 4 / 24, "L1H0": 4 / 24, "L1H1": 4 / 24,
                         "embed": 10 / 24, "pos": 6 / 24}  # fmt: skip
