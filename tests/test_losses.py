"""Every loss of `pat_nbdev.losses`, both variants, against the naive references of `pat_nbdev.reference`.

The references (`REFS`, `ref_pat`, `ref_cb_sigmoid`, ...) loop over pixels in Python and use only scalar arithmetic on
0-d float64 tensors, so autograd gives a reference gradient too; `nbs/02a_reference.ipynb` says what each follows. The
authors' own code, transcribed in the same module, is compared with our `variant="authors"` losses in
tests/test_reference.py.
"""
import math
import pytest
import torch
import torch.nn.functional as F
from pat_nbdev.losses import (LOSS_NAMES, VARIANTS, get_loss, inplace_backward, pat_loss, ce_loss, PATLoss,
                              log_prob_of_target, blv_noise, blv_loss, ldam_margins)
from pat_nbdev.reference import REFS, IGNORE_INDEX as IGNORE, ref_pat, ref_cb_sigmoid, blv_official

B, C, H, W = 2, 5, 6, 7
COUNT_LOSSES = ("cb", "cbfocal", "bms", "ldam", "blv")


# ---------------------------------------------------------------- inputs
@pytest.fixture
def batch():
    "Logits with spread, labels using classes 0-3 only (4 is absent), class 3 absent from image 1, ~10 % ignored."
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(B, C, H, W, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (B, H, W), generator=g)
    y[1][y[1] == 3] = 2
    y[torch.rand(B, H, W, generator=g) < 0.1] = IGNORE
    assert (y == 4).sum() == 0 and (y == IGNORE).sum() > 0
    return x, y

FIXED_COUNTS = [5000.0, 800.0, 120.0, 9.0, 0.0]

def build(name, variant, counts=None, **kw):
    if name == "blv": kw["generator"] = torch.Generator().manual_seed(0)
    return get_loss(name, variant=variant, class_counts=counts, **kw)


# ---------------------------------------------------------------- values and gradients against the references
@pytest.mark.parametrize("counts", [None, FIXED_COUNTS], ids=["batch-counts", "fixed-counts"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_against_reference(name, variant, counts, batch):
    if counts is not None and name not in COUNT_LOSSES: pytest.skip("loss uses no counts")
    x, y = batch
    xl, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = build(name, variant, counts)(xl, y)
    ref = REFS[name](xr, y, variant, counts)
    torch.testing.assert_close(ours, ref.reshape(()), rtol=1e-9, atol=1e-12)
    ours.backward(); ref.backward()
    torch.testing.assert_close(xl.grad, xr.grad, rtol=1e-8, atol=1e-12)

@pytest.mark.parametrize("normalize", ["mean", "mask"])
@pytest.mark.parametrize("detach_beta", [False, True])
def test_pat_options_against_reference(normalize, detach_beta, batch):
    x, y = batch
    xl, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = pat_loss(xl, y, tau=0.7, alpha=3.0, normalize=normalize, detach_beta=detach_beta)
    ref = ref_pat(xr, y, "authors", tau=0.7, alpha=3.0, normalize=normalize, detach_beta=detach_beta)
    torch.testing.assert_close(ours, ref.reshape(()), rtol=1e-9, atol=1e-12)
    ours.backward(); ref.backward()
    torch.testing.assert_close(xl.grad, xr.grad, rtol=1e-8, atol=1e-12)

@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0])
@pytest.mark.parametrize("counts", [None, FIXED_COUNTS], ids=["batch-counts", "fixed-counts"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_cb_sigmoid_form_against_reference(variant, counts, gamma, batch):
    x, y = batch
    xl, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = get_loss("cbfocal", variant=variant, class_counts=counts, gamma=gamma, focal_form="sigmoid")(xl, y)
    ref = ref_cb_sigmoid(xr, y, variant, counts, gamma)
    torch.testing.assert_close(ours, ref.reshape(()), rtol=1e-9, atol=1e-12)
    ours.backward(); ref.backward()
    torch.testing.assert_close(xl.grad, xr.grad, rtol=1e-8, atol=1e-12)
    assert not torch.isclose(ours, get_loss("cbfocal", variant=variant, class_counts=counts, gamma=gamma)(x, y))

def test_cb_sigmoid_form_finite_where_cuis_modulator_underflows():
    "A true-class logit of -100 in float32: the term is ~100 (theirs, exp(-g y x - g log1p(exp(-x))), would give 0)."
    x, y = torch.tensor([-100.0, 0.0, 0.0]).view(1, 3, 1, 1).requires_grad_(), torch.zeros(1, 1, 1, dtype=torch.long)
    loss = get_loss("cbfocal", variant="original", focal_form="sigmoid")(x, y)
    loss.backward()
    assert loss.item() > 100 and torch.isfinite(x.grad).all() and x.grad[0, 0, 0, 0] < -0.5

def test_authors_ldam_absent_class_takes_the_largest_margin():
    "ibla's `+ 0.0001`: an absent class gets 1e-4^(-1/4) = 10, the maximum, so every real margin is max_m n^(-1/4) / 10."
    n = torch.tensor([400.0, 25.0, 0.0, 1.0], dtype=torch.float64)
    ours, cao = ldam_margins(n, 0.5, "authors"), ldam_margins(n, 0.5, "original")
    tenth = torch.tensor([0.5 / math.sqrt(20) / 10, 0.5 / math.sqrt(5) / 10, 0.5, 0.5 / 10], dtype=torch.float64)
    torch.testing.assert_close(ours, tenth, rtol=1e-4, atol=0)  # 1e-4 on a count of 1 moves its margin by 2.5e-5
    torch.testing.assert_close(cao, torch.tensor([0.5 / math.sqrt(20), 0.5 / math.sqrt(5), 0.0, 0.5], dtype=torch.float64))
    full = torch.tensor([400.0, 25.0, 3.0, 1.0], dtype=torch.float64)  # every class present: the two agree
    torch.testing.assert_close(ldam_margins(full, 0.5, "authors"), ldam_margins(full, 0.5, "original"), rtol=1e-4, atol=0)

def test_blv_original_differs_from_mmseg_mean_by_labelled_share(batch):
    "The official code averages over all B*H*W pixels (ignored ones count as 0); ours over the labelled ones."
    x, y = batch
    n = torch.tensor([5000.0, 800.0, 120.0, 9.0, 1.0], dtype=torch.float64)
    ours = blv_loss(x, y, variant="original", class_counts=n, generator=torch.Generator().manual_seed(0))
    mmseg = blv_official(x, y, n, blv_noise(x.shape, 4.0, torch.Generator().manual_seed(0), x.dtype))
    labelled = (y != IGNORE).sum().item() / y.numel()
    assert labelled < 0.95
    torch.testing.assert_close(ours * labelled, mmseg, rtol=1e-12, atol=0)
    assert not torch.isclose(ours, mmseg)

@pytest.mark.parametrize("name", ["bms", "blv"])
def test_original_eval_mode_against_reference(name, batch):
    x, y = batch
    ours = build(name, "original").eval()(x, y)
    torch.testing.assert_close(ours, REFS[name](x, y, "original", training=False).reshape(()), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ours, ce_loss(x, y))

def test_blv_noise_law():
    "min(|delta|, 1), delta ~ N(0, sigma^2): its CDF at a few points against erf, by a Kolmogorov-Smirnov-style bound."
    sigma, n = 2.0, blv_noise((2, 3, 200, 300), 2.0, torch.Generator().manual_seed(3), torch.float64)
    for t in (0.1, 0.3, 0.6, 0.9):
        assert abs((n <= t).double().mean().item() - math.erf(t / (sigma * math.sqrt(2)))) < 3e-3
    assert (n == 1).double().mean().item() == pytest.approx(1 - math.erf(1 / (sigma * math.sqrt(2))), abs=3e-3)
    assert n.min() >= 0 and n.max() <= 1 and n.dtype == torch.float64

def test_blv_noise_is_seeded_and_thread_count_free():
    draw = lambda seed: blv_noise((3, 4, 300, 300), 4.0, torch.Generator().manual_seed(seed))
    a = draw(0)
    torch.set_num_threads(2); b = draw(0)
    assert torch.equal(a, b) and not torch.equal(a, draw(1))

def test_authors_blv_keeps_noise_in_eval(batch):
    x, y = batch
    assert not torch.isclose(build("blv", "authors").eval()(x, y), ce_loss(x, y))


# ---------------------------------------------------------------- autograd
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_gradcheck(name, variant):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 3, 2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([[[0, 2, 2], [255, 0, 2]]])
    hp = dict(s=2.0) if name == "ldam" else {}  # s=30 makes finite differences too stiff
    fn = lambda a: build(name, variant, **hp)(a, y)  # a fresh generator per call: the same BLV noise
    with inplace_backward(False):
        assert torch.autograd.gradcheck(fn, (x,))
    if name == "cbfocal":
        assert torch.autograd.gradcheck(lambda a: build(name, variant, focal_form="sigmoid")(a, y), (x,))

def test_fused_backward_matches_kept_buffer_and_refuses_second_pass(batch):
    x, y = batch
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    pat_loss(a, y, tau=0.5).backward()
    with inplace_backward(False): pat_loss(b, y, tau=0.5).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
    loss = pat_loss(x.clone().requires_grad_(), y)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace_backward"): loss.backward()

def test_log_prob_of_target_twice_without_inplace():
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 4, (1, 3, 3))
    with inplace_backward(False): s = log_prob_of_target(x, y).sum()
    g1, = torch.autograd.grad(s, x, retain_graph=True)
    g2, = torch.autograd.grad(s, x)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    torch.testing.assert_close(g1, torch.autograd.grad(torch.log_softmax(x, 1).gather(1, y[:, None]).sum(), x)[0])


# ---------------------------------------------------------------- mixed precision
def confidently_wrong(n_classes=20, dtype=torch.float32):
    y = torch.arange(8 * 8).remainder(n_classes).view(1, 8, 8)
    x = torch.full((1, n_classes, 8, 8), -30.0)
    x.scatter_(1, ((y + 1) % n_classes)[:, None], 30.0)  # a wrong class at +30, the true one at -30
    return x.to(dtype), y

def test_pat_bf16_autocast_finite_on_confidently_wrong_pixels():
    x, y = confidently_wrong()
    conv = torch.nn.Conv2d(20, 20, 1, bias=False)
    with torch.no_grad(): conv.weight.copy_(torch.eye(20).view(20, 20, 1, 1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = conv(x)
        loss = PATLoss()(logits, y)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.float32
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(conv.weight.grad).all()
    # beta = e^20/2 at every pixel (p ~ e^-60): the loss equals the float32 value on upcast logits
    torch.testing.assert_close(loss, pat_loss(logits.detach().float(), y))
    assert loss.item() > math.exp(20) / 2 * 50 / 20

@pytest.mark.parametrize("name", LOSS_NAMES)
def test_half_logits_give_float32_loss_and_finite_grads(name):
    x, y = confidently_wrong(n_classes=5, dtype=torch.float16)  # C=5: PAT's gradients stay in float16's range
    x = x.clamp(-8, 8).requires_grad_()
    for kw in ([{}, dict(focal_form="sigmoid")] if name == "cbfocal" else [{}]):
        x.grad = None
        loss = build(name, "original", **kw)(x, y)
        loss.backward()
        assert loss.dtype == torch.float32 and torch.isfinite(loss) and x.grad.dtype == torch.float16
        assert torch.isfinite(x.grad).all()


# ---------------------------------------------------------------- properties
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_all_ignored_gives_zero_and_zero_grad(name):
    x = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = build(name, "authors")(x, torch.full((1, 2, 2), IGNORE))
    loss.backward()
    assert loss.item() == 0.0 and (x.grad == 0).all()

def test_ignored_pixels_do_not_matter(batch):
    x, y = batch
    ignored = (y == IGNORE)[:, None].expand_as(x)
    x2 = torch.where(ignored, x + 100 * torch.randn_like(x), x)
    for name in LOSS_NAMES:
        for variant in VARIANTS:
            torch.testing.assert_close(build(name, variant)(x, y), build(name, variant)(x2, y))
    sig = get_loss("cbfocal", focal_form="sigmoid")
    torch.testing.assert_close(sig(x, y), sig(x2, y))

def test_ce_matches_torch(batch):
    x, y = batch
    torch.testing.assert_close(ce_loss(x, y), F.cross_entropy(x, y, ignore_index=IGNORE))

def test_custom_ignore_index(batch):
    x, y = batch
    torch.testing.assert_close(pat_loss(x, torch.where(y == IGNORE, -1, y), ignore_index=-1), pat_loss(x, y))


# ---------------------------------------------------------------- error contracts
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_bad_inputs_raise(name):
    loss_fn = build(name, "authors")
    x, y = torch.randn(2, 4, 3, 3), torch.randint(0, 4, (2, 3, 3))
    with pytest.raises(ValueError, match=r"\[0, 4\).*found 4"): loss_fn(x, y.clamp(max=3) + 1)
    with pytest.raises(ValueError, match=r"\[0, 4\).*found -1"): loss_fn(x, y - 1)
    with pytest.raises(ValueError, match=r"target must have shape \[B, H, W\]"): loss_fn(x, y[:, :2])
    with pytest.raises(ValueError, match=r"logits must have shape \[B, C, H, W\]"): loss_fn(x[0], y[0])
    with pytest.raises(ValueError, match="logits must be a float tensor"): loss_fn(x.long(), y)
    with pytest.raises(ValueError, match="target must be an integer tensor"): loss_fn(x, y.float())
    for bad in (float("nan"), float("inf"), -float("inf")):
        x2 = x.clone(); x2[1, 2, 0, 1] = bad
        with pytest.raises(ValueError, match="logits must be finite"): loss_fn(x2, y)

def test_finite_logits_whose_sum_overflows_are_accepted():
    x, y = torch.full((1, 2, 4, 4), 3e38), torch.zeros(1, 4, 4, dtype=torch.long)
    assert torch.isfinite(ce_loss(x, y))

def test_bad_hyper_parameters_raise():
    with pytest.raises(ValueError, match="unknown loss 'dice'.*'pat'"): get_loss("dice")
    with pytest.raises(ValueError, match=r"variant must be one of \('authors', 'original'\)"): get_loss("ce", variant="paper")
    with pytest.raises(ValueError, match="tau must be > 0"): get_loss("pat", tau=0)
    with pytest.raises(ValueError, match="alpha must be > 0"): pat_loss(torch.randn(1, 2, 1, 1), torch.zeros(1, 1, 1, dtype=torch.long), alpha=-1)
    with pytest.raises(ValueError, match="normalize must be 'mean' or 'mask'"): get_loss("pat", normalize="sum")
    with pytest.raises(ValueError, match=r"beta must lie in \(0, 1\)"): get_loss("cb", beta=1.5)
    with pytest.raises(ValueError, match="gamma must be >= 0"): get_loss("focal", gamma=-1)
    with pytest.raises(ValueError, match="sigma must be >= 0"): get_loss("blv", sigma=-1)
    with pytest.raises(ValueError, match="focal_form must be 'softmax' or 'sigmoid'"): get_loss("cbfocal", focal_form="tanh")
    with pytest.raises(ValueError, match="class_counts must be finite and >= 0"): get_loss("cb", class_counts=[3, -1])
    with pytest.raises(ValueError, match=r"one entry per class \(4\)"):
        get_loss("ldam", class_counts=[1, 2, 3])(torch.randn(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))

def test_pat_refuses_overflowing_class_count():
    x, y = torch.randn(1, 100, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="overflows"): pat_loss(x, y)
    assert torch.isfinite(pat_loss(x.double(), y))


def test_backward_has_no_denormals_and_matches_torch_on_extreme_logits():
    "Probabilities far below float32's range (logit gaps of ~300) give a gradient with no denormal entry, equal to torch's."
    g = torch.Generator().manual_seed(0)
    x = (100 * torch.randn(2, 6, 16, 16, generator=g)).requires_grad_()
    y = torch.randint(0, 6, (2, 16, 16), generator=g)
    ce_loss(x, y).backward()
    grad, tiny = x.grad, torch.finfo(torch.float32).tiny
    assert not ((grad != 0) & (grad.abs() < tiny)).any()
    xr = x.detach().clone().requires_grad_()
    torch.nn.functional.cross_entropy(xr, y).backward()
    torch.testing.assert_close(grad, xr.grad, rtol=1e-5, atol=1e-30)
