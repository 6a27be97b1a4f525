"""The authors' code as transcribed in `pat_nbdev.reference` (KhoiDOO/ibla) against our `variant="authors"` losses, values
and gradients, on a batch with every class present and on one with a class absent: the sweep that `02a_reference` (one
batch, values, beside each transcription) leaves to the tests. The official code of Cui et al. and of BLV, and the
authors' LDAM margins, are checked against ours once, in `02a_reference`."""
import pytest
import torch
from pat_nbdev.losses import PAPER_LOSSES, get_loss, blv_noise
from pat_nbdev.reference import AUTHORS_LOSSES, authors_blv, onehot

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
@pytest.mark.parametrize("name", PAPER_LOSSES)  # the authors wrote no weighted CE
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

def test_bench_runs_these_transcriptions():
    from pat_nbdev import bench, reference
    assert bench.AUTHORS_LOSSES is reference.AUTHORS_LOSSES and tuple(AUTHORS_LOSSES) == PAPER_LOSSES

