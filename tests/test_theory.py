"""Theory checks (nbs/03_theory.ipynb): per-class gradient ratios against mask sizes, and PAT's closed-form logit gradient.

Reference values are computed independently of `pat_nbdev.theory`: restricted losses through `ignore_index`, the
naive per-pixel PAT of `pat_nbdev.reference`, and autograd. The closed-form gradient (`pat_logit_grad`) and the weight
(`inverted_softmax_beta`) are checked against autograd and `ref_pat` in `nbs/03_theory.ipynb`, once.
"""
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from pat_nbdev.losses import get_loss, pat_loss
from pat_nbdev.reference import ref_pat
from pat_nbdev.theory import (class_gradient_norms, inverted_softmax_beta, margin_to_prob, mask_sizes,
                              pat_grad_amplification, pat_logit_grad, scaling_exponent)

IGNORE = 255
MASK_RTOL = 1e-6  # pat_loss(normalize="mask") forms its 1/|M| weights in float32 even for float64 logits


def unequal_target(seed: int):
    "One 40x50 label map: class 0 60 %, class 1 5 %, class 2 0.5 %, class 3 the rest but an ignored strip; blobs placed by `seed`."
    g = torch.Generator().manual_seed(seed)
    t = torch.full((40, 50), 3, dtype=torch.long)
    r, c = torch.randint(1, 30, (2,), generator=g).tolist()
    t[r:r + 10, c:c + 10] = 1                                    # 100 px block
    t[35:37, 40:45] = 2                                          # 10 px
    t[0, :20] = IGNORE                                           # 20 ignored px
    free = (t == 3).flatten().nonzero()[:, 0]
    t.view(-1)[free[torch.randperm(len(free), generator=g)[:1200]]] = 0   # 1200 px, scattered
    return t[None]


def ideal_logits(target, n_classes=4, margin=2.0):
    "Every pixel: true logit `margin`, others 0 (ignored pixels: class 0), so all pixels have equally large gradients."
    y = torch.where(target == IGNORE, 0, target)
    return torch.zeros(target.shape[0], n_classes, *target.shape[1:], dtype=torch.float64).scatter_(1, y[:, None], margin)


def restricted_bias_grad_norms(logits, target, loss_fn, n_classes):
    "Independent route: for each class, relabel every other pixel as ignored, differentiate, sum over pixels."
    out = []
    for l in range(n_classes):
        x = logits.clone().requires_grad_()
        g, = torch.autograd.grad(loss_fn(x, target, only=l), x)
        out.append(g.sum((0, 2, 3)).norm())
    return torch.stack(out)


def ce_sum(x, t, only=None):
    return F.cross_entropy(x, t if only is None else torch.where(t == only, t, IGNORE), ignore_index=IGNORE, reduction='sum')


def pat_mask_ref(x, t, only=None):
    "PAT with the paper's mask normalisation (`reference.ref_pat`, a loop over pixels), restricted to class `only`."
    return ref_pat(x, t if only is None else torch.where(t == only, t, IGNORE), "original", normalize="mask")


@pytest.mark.parametrize('seed', [0, 1])
def test_ce_gradient_ratio_follows_mask_ratio(seed):
    target = unequal_target(seed); x = ideal_logits(target)
    sizes = mask_sizes(target, 4)[0].double()
    assert sizes[:3].tolist() == [1200, 100, 10]
    ref = restricted_bias_grad_norms(x, target, ce_sum, 4)
    torch.testing.assert_close(ref / ref[0], sizes / sizes[0], rtol=1e-10, atol=0)
    ours = class_gradient_norms(x, target, get_loss('ce'), 'bias')
    torch.testing.assert_close(ours / ours[0], sizes / sizes[0], rtol=1e-10, atol=0)
    l2 = class_gradient_norms(x, target, get_loss('ce'), 'logits')    # each pixel owns its logits: square root
    torch.testing.assert_close(l2 / l2[0], (sizes / sizes[0]).sqrt(), rtol=1e-10, atol=0)
    assert scaling_exponent(sizes / sizes[0], ours / ours[0]) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize('seed', [0, 1])
def test_pat_mask_normalisation_removes_mask_ratio(seed):
    target = unequal_target(seed); x = ideal_logits(target)
    sizes = mask_sizes(target, 4)[0].double()
    ref = restricted_bias_grad_norms(x, target, pat_mask_ref, 4)
    torch.testing.assert_close(ref / ref[0], torch.ones(4, dtype=torch.float64), rtol=1e-10, atol=0)
    ours = class_gradient_norms(x, target, partial(pat_loss, normalize='mask'), 'bias')
    torch.testing.assert_close(ours / ours[0], torch.ones(4, dtype=torch.float64), rtol=MASK_RTOL, atol=0)
    mean = class_gradient_norms(x, target, partial(pat_loss, normalize='mean'), 'bias')  # authors' code: no homogenisation
    torch.testing.assert_close(mean / mean[0], sizes / sizes[0], rtol=1e-10, atol=0)


def test_mask_normalisation_divides_parameter_gradients_by_mask_size():
    "In one image, on any network, PAT-mean's per-class ratios are exactly PAT-mask's times the mask-size ratios."
    torch.manual_seed(0)
    target = unequal_target(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(6, 4, 1)).double()
    out = net(torch.randn(1, 3, 40, 50, dtype=torch.float64))
    mean = class_gradient_norms(out, target, partial(pat_loss, normalize='mean'), net.parameters())
    mask = class_gradient_norms(out, target, partial(pat_loss, normalize='mask'), net.parameters())
    sizes = mask_sizes(target, 4)[0].double()
    torch.testing.assert_close(mean / mean[0], sizes / sizes[0] * mask / mask[0], rtol=MASK_RTOL, atol=0)


def test_not_detaching_beta_scales_gradient_by_amplification():
    "Autograd alone: the authors' gradient is the detached one times a(p_y) = 1 + C p_y (-log p_y), pixel by pixel."
    torch.manual_seed(3)
    x = torch.randn(1, 5, 4, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 5, (1, 4, 4))
    g_auth, = torch.autograd.grad(pat_loss(x, y, detach_beta=False), x)
    g_det, = torch.autograd.grad(pat_loss(x, y, detach_beta=True), x)
    p_y = F.softmax(x.detach(), 1).gather(1, y[:, None])
    torch.testing.assert_close(g_auth, g_det * pat_grad_amplification(p_y, 5), rtol=1e-10, atol=1e-15)
    assert (pat_grad_amplification(p_y, 5) >= 1).all()


def test_margin_to_prob_matches_softmax():
    m = torch.tensor([-3.0, 0.0, 1.0, 6.0], dtype=torch.float64)
    x = torch.zeros(4, 20, dtype=torch.float64); x[:, 0] = m
    torch.testing.assert_close(margin_to_prob(m, 20, tau=1.5), F.softmax(x / 1.5, 1)[:, 0])


def test_bad_input_raises():
    x, y = torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match='wrt'): class_gradient_norms(x, y, ce_sum, wrt='weights')
    with pytest.raises(ValueError, match='int64'): class_gradient_norms(x, y.float(), ce_sum)
    with pytest.raises(ValueError, match='shape'): pat_logit_grad(x, torch.zeros(1, 3, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r'\[0, 3\)'): pat_logit_grad(x, torch.full((1, 2, 2), 7))
    with pytest.raises(ValueError, match='parameters'): class_gradient_norms(x, y, ce_sum, wrt=[torch.zeros(1)])
    with pytest.raises(ValueError, match='probability'): inverted_softmax_beta(torch.tensor(-0.1), 3)
    with pytest.raises(ValueError, match='tau'): margin_to_prob(torch.tensor(0.0), 3, tau=0.0)


def test_any_integer_labels_as_the_losses_take_them():
    "03_theory checks its inputs with the losses' check, which takes any integer labels: int32 gives what int64 gives."
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (2, 4, 4), generator=g)
    for fn in (lambda t: class_gradient_norms(x, t, ce_sum), lambda t: pat_logit_grad(x, t)):
        torch.testing.assert_close(fn(y.int()), fn(y))
