"""The authors' code as transcribed in `pat_nbdev.reference` (KhoiDOO/ibla) against our `variant="authors"` losses, values
and gradients, on a batch with every class present and on one with a class absent; and the official code of Cui et al.
and of BLV against our `variant="original"` losses."""
import pytest
import torch
from pat_nbdev.losses import LOSS_NAMES, get_loss, blv_noise, blv_loss, cbfocal_loss, ldam_margins
from pat_nbdev.reference import (AUTHORS_LOSSES, authors_blv, authors_ldam_margins, blv_official, cui_focal_loss,
                                 onehot)

C = 6

def batch(absent:bool):
    "Float32 logits with spread and labels without ignored pixels (the authors' code has none); `absent`: no pixel of the last class."
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(2, C, 12, 12, generator=g)
    y = torch.randint(0, C, (2, 12, 12), generator=g)
    if absent: y[y == C - 1] = 0
    assert bool((onehot(y, C).sum([0, 2, 3]) == 0).any()) == absent
    return x, y

def noise(x): return blv_noise(x.shape, 4.0, torch.Generator().manual_seed(1))

@pytest.mark.parametrize("absent", [False, True], ids=["all-present", "one-absent"])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_authors_code_equals_ours(name, absent):
    x, y = batch(absent)
    xt, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    if name == "blv":  # the same noise on both sides: ours drawn by `blv_noise`, given to theirs
        theirs = authors_blv(xt, onehot(y, C), variation=noise(x))
        ours = get_loss(name, generator=torch.Generator().manual_seed(1))(xo, y)
    else: theirs, ours = AUTHORS_LOSSES[name](xt, onehot(y, C)), get_loss(name)(xo, y)
    assert torch.isfinite(theirs)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    theirs.backward(); ours.backward()
    torch.testing.assert_close(xo.grad, xt.grad, rtol=1e-4, atol=1e-7)

def test_authors_ldam_margins_follow_the_nan_fix():
    "KhoiDOO/ibla 0118de9 'fix BUG uncertainty nan loss value': + 0.0001 on every count. Without it an absent class's margin is inf * 0."
    counts = onehot(batch(absent=True)[1], C).sum([0, 2, 3])
    m = 1.0 / torch.sqrt(torch.sqrt(counts))  # the lines before the fix
    assert (m * (0.5 / torch.max(m))).isnan().any()
    ours = authors_ldam_margins(counts)
    assert torch.isfinite(ours).all() and ours[-1] == 0.5
    torch.testing.assert_close(ours, ldam_margins(counts).float())

def test_bench_runs_these_transcriptions():
    from pat_nbdev import bench, reference
    assert bench.AUTHORS_LOSSES is reference.AUTHORS_LOSSES and tuple(AUTHORS_LOSSES) == LOSS_NAMES

@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0])
def test_cui_focal_loss_equals_our_sigmoid_form(gamma):
    x, y = batch(absent=False)
    counts = torch.tensor([5000.0, 800, 120, 9, 3, 1], dtype=torch.float64)
    ours = cbfocal_loss(x.double(), y, gamma=gamma, variant="original", class_counts=counts, focal_form="sigmoid")
    torch.testing.assert_close(ours, cui_focal_loss(x.double(), y, counts, gamma), rtol=1e-10, atol=0)

def test_blv_official_is_ours_times_the_labelled_share():
    x, y = batch(absent=False)
    y[0, :3] = 255
    counts = torch.tensor([5000.0, 800, 120, 9, 3, 1])
    ours = blv_loss(x, y, variant="original", class_counts=counts, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ours * (y != 255).sum() / y.numel(), blv_official(x, y, counts, noise(x)), rtol=1e-5, atol=0)
