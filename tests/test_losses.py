"""Every loss of `pat_nbdev.losses`, both variants, against the naive references of `pat_nbdev.reference`.

The references (`REFS`, `ref_pat`, `ref_cb_sigmoid`, ...) loop over pixels in Python and use only scalar arithmetic on
0-d float64 tensors, so autograd gives a reference gradient too; `nbs/02a_reference.ipynb` says what each follows. The
authors' own code, transcribed in the same module, is compared with our `variant="authors"` losses in
tests/test_reference.py; the official code of Cui et al. and BLV in `02a_reference` itself. Last, the error contracts:
hyper-parameters, and users' loss modules that do not import or lack the class named.
"""
import math
import pytest
import torch
import torch.nn.functional as F
from pat_nbdev.losses import LOSS_NAMES, VARIANTS, get_loss, inplace_backward, pat_loss, ce_loss, PATLoss, log_prob_of_target, blv_noise
from pat_nbdev.reference import REFS, IGNORE_INDEX as IGNORE, ref_pat, ref_cb_sigmoid

B, C, H, W = 2, 5, 6, 7
COUNT_LOSSES = ("cb", "cbfocal", "bms", "ldam", "blv", "wce")


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

def test_wce_with_image_pixels_against_reference(batch):
    "The training split's counts with the pixels of the images holding each class (SegNet's frequencies), value and gradient."
    x, y = batch
    pixels = [9000.0, 2000.0, 700.0, 50.0, 0.0]
    xl, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = get_loss("wce", class_counts=FIXED_COUNTS, image_pixels=pixels)(xl, y)
    ref = REFS["wce"](xr, y, "original", FIXED_COUNTS, pixels)
    torch.testing.assert_close(ours, ref.reshape(()), rtol=1e-9, atol=1e-12)
    ours.backward(); ref.backward()
    torch.testing.assert_close(xl.grad, xr.grad, rtol=1e-8, atol=1e-12)
    assert not torch.isclose(ours, get_loss("wce", class_counts=FIXED_COUNTS)(x, y))  # the images' sizes change the weights

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
    with pytest.raises(ValueError, match="tau must be a finite number > 0, got 0"): get_loss("pat", tau=0)
    one_pixel = torch.randn(1, 2, 1, 1), torch.zeros(1, 1, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="alpha must be a finite number > 0, got -1"): pat_loss(*one_pixel, alpha=-1)
    with pytest.raises(ValueError, match="normalize must be 'mean' or 'mask'"): get_loss("pat", normalize="sum")
    with pytest.raises(ValueError, match=r"beta must lie in \(0, 1\)"): get_loss("cb", beta=1.5)
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0, got -1"): get_loss("focal", gamma=-1)
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0, got -1"): get_loss("blv", sigma=-1)
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


# ---------------------------------------------------------------- hyper-parameter types and user loss modules (issue 14)
@pytest.mark.parametrize("bad", ["2", None, True, float("inf"), float("nan"), -float("inf")])
@pytest.mark.parametrize("key", ["alpha", "tau"])
def test_pat_hyper_parameters_must_be_finite_positive_numbers(key, bad):
    "alpha='2' used to be a TypeError from `>`, alpha=inf a loss of 0: both are one ValueError naming the key."
    with pytest.raises(ValueError, match=rf"^{key} must be a finite number > 0, got "):
        PATLoss(**{key: bad})
    with pytest.raises(ValueError, match=rf"^{key} must be a finite number > 0"):
        pat_loss(torch.randn(1, 2, 1, 1), torch.zeros(1, 1, 1, dtype=torch.long), **{key: bad})

def test_numeric_hyper_parameters_of_other_losses():
    with pytest.raises(ValueError, match="gamma must be a finite number >= 0, got 'x'"): get_loss("focal", gamma="x")
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0, got inf"): get_loss("blv", sigma=math.inf)
    with pytest.raises(ValueError, match=r"beta must lie in \(0, 1\), got '0.5'"): get_loss("cb", beta="0.5")
    import numpy as np
    assert get_loss("pat", alpha=np.float32(3), tau=2)(torch.randn(1, 2, 1, 1), torch.zeros(1, 1, 1, dtype=torch.long)) > 0

@pytest.fixture
def user_modules(tmp_path, monkeypatch):
    "Loss modules outside the package: one without the class asked for, one with a syntax error on line 3."
    (tmp_path / "nocls_losses.py").write_text("import torch.nn as nn\n\nclass Mine(nn.Module): pass\n\ndef helper(): pass\n")
    (tmp_path / "broken_losses.py").write_text("import torch.nn as nn\n\nclass Broken(nn.Module)\n    pass\n")
    (tmp_path / "raising_losses.py").write_text("import torch.nn as nn\n\nraise RuntimeError('no GPU here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path

def test_import_path_never_falls_back_to_a_built_in_loss(user_modules):
    "`nocls_losses:ce` used to resolve to the built-in CE (and be recorded as the user's loss)."
    from pat_nbdev.losses import resolve_loss, CELoss
    with pytest.raises(ValueError, match=r"'nocls_losses:ce': module 'nocls_losses' \(.*nocls_losses.py\) has no 'ce'"):
        resolve_loss("nocls_losses:ce")
    with pytest.raises(ValueError, match=r"nocls_losses.helper is a function, expected an nn.Module class"):
        resolve_loss("nocls_losses:helper")
    assert resolve_loss("nocls_losses:Mine").__name__ == "Mine" and resolve_loss("ce") is CELoss
    with pytest.raises(ValueError, match="or an import path 'package.module:Class'"): resolve_loss(":ce")

def test_user_module_with_a_syntax_error_is_one_line(user_modules):
    from pat_nbdev.losses import resolve_loss
    with pytest.raises(ValueError) as e: resolve_loss("broken_losses:Broken")
    assert str(user_modules / "broken_losses.py") in str(e.value) and "line 3" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match=r"importing 'raising_losses' raised RuntimeError: no GPU here \(.*raising_losses.py, line 3\)"):
        resolve_loss("raising_losses:X")

def test_pat_train_names_the_missing_class_and_the_syntax_error(user_modules, capsys):
    "pat-train exits 2 with one line (no traceback) for both, before any training."
    from pat_nbdev.cli import main
    for loss, expected in (("nocls_losses:ce", "has no 'ce'"), ("broken_losses:Broken", "broken_losses.py, line 3")):
        with pytest.raises(SystemExit) as e: main(["--loss", loss, "--out", str(user_modules / "run")])
        err = capsys.readouterr().err
        assert e.value.code == 2 and expected in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (user_modules / "run").exists()

def test_pat_reproduce_extra_loss_with_a_syntax_error_is_one_line(user_modules, capsys):
    from pat_nbdev.reproduce import main
    argv = ["--preset", "tiny", "--extra-loss", "broken_losses:Broken", "--dry-run", "--out", str(user_modules / "o")]
    with pytest.raises(SystemExit) as e: main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--extra-loss" in err and "broken_losses.py, line 3" in err and "Traceback" not in err, err
