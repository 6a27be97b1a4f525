"""Tests for pat_nbdev.cost: FLOP counts by hand, the run and grid arithmetic, GPU-hours, activation memory, runs per device."""
import inspect
import math
import pandas as pd
import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from pat_nbdev.cost import (DATASETS, H100_SXM_TFLOPS, achieved_tflops, activation_bytes_per_image, flops_per_image,
                            gpu_hours, grid_cost_table, module_flops, profile_table, run_flops, run_memory_bytes,
                            runs_per_cell, split_sizes, suggest_runs_per_device)
from pat_nbdev.data import split_indices
from pat_nbdev.experiments import PRESETS, plan_runs

GiB = 2**30
PAPER_KEYS = list(PRESETS['paper'].datasets)


def conv_by_hand(c_in, c_out, k, h, w, groups=1): return 2 * c_in // groups * c_out * k * k * h * w


def test_conv2d_forward_and_backward_by_hand():
    conv = nn.Conv2d(5, 7, 3, padding=1, bias=True)
    fwd = conv_by_hand(5, 7, 3, 9, 11)
    # an input without gradient (a network's first layer): the backward is the weight gradient only
    assert module_flops(conv, torch.randn(3, 5, 9, 11)) == dict(fwd=fwd, bwd=fwd, fwd_bwd=2 * fwd)
    # an inner layer: input gradient and weight gradient, each one forward's worth
    assert module_flops(conv, torch.randn(3, 5, 9, 11, requires_grad=True))['fwd_bwd'] == 3 * fwd


def test_strided_conv_counts_output_pixels():
    conv = nn.Conv2d(4, 8, 2, stride=2, bias=False)
    assert module_flops(conv, torch.randn(1, 4, 16, 16))['fwd'] == conv_by_hand(4, 8, 2, 8, 8)


def test_grouped_conv_backward_is_corrected():
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    x = torch.randn(2, 8, 10, 10, requires_grad=True)
    fwd = conv_by_hand(8, 8, 3, 10, 10, groups=8)
    assert module_flops(conv, x) == dict(fwd=fwd, bwd=2 * fwd, fwd_bwd=3 * fwd)
    with FlopCounterMode(display=False) as fc:  # torch's own formula: never below the true count
        conv(x).sum().backward()
    assert fc.get_total_flops() >= 3 * fwd * len(x)


def test_linear_layer():
    lin = nn.Linear(6, 4)
    assert module_flops(lin, torch.randn(5, 6, requires_grad=True)) == dict(fwd=48, bwd=96, fwd_bwd=144)


def test_flops_per_image_is_per_image_and_device_free():
    one = flops_per_image('segnet', (32, 32), 3, preset='small', batch=1)
    two = flops_per_image('segnet', (32, 32), 3, preset='small', batch=2)
    assert one == two
    assert flops_per_image('segnet', (32, 32), 3, preset='small', device='meta') == one
    assert 2.9 < one['fwd_bwd'] / one['fwd'] < 3  # 3x, less the first layer's input gradient
    # twice the pixels, twice the FLOPs (fully convolutional)
    wide = flops_per_image('segnet', (32, 64), 3, preset='small')
    assert wide['fwd_bwd'] == pytest.approx(2 * one['fwd_bwd'], rel=1e-3)


def test_split_sizes_match_the_loaders_split():
    for pool in (1449, 3475, 101):
        got = split_sizes(pool, drop_last=False)
        assert got == {s: len(split_indices(list(range(pool)), s)) for s in ('train', 'val', 'test')}
    assert split_sizes(1449) == dict(train=1160, val=144, test=144)  # 1161 train images, last batch of 1 dropped
    assert split_sizes(7349)['train'] % 8 == 0


def test_datasets_match_the_loaders():
    from pat_nbdev import data
    assert set(DATASETS) == set(PAPER_KEYS)
    for key, d in DATASETS.items():
        assert inspect.signature(data.LOADERS[key].__init__).parameters['size'].default in (d['size'], d['size'][0])
    assert len(data.OxfordPet.class_names) == DATASETS['oxford_pet']['n_classes']
    assert len(data.cityscapes_table(True)[0]) == DATASETS['cityscapes']['n_classes']
    assert len(data.NYUV2_CLASSES) + 1 == DATASETS['nyuv2']['n_classes']
    assert [d['pool'] for d in DATASETS.values()] == [3680 + 3669, 2975 + 500, 795 + 654]


def test_run_flops_formula_and_linearity():
    assert run_flops(2.0, 6.0, train=10, val=3, test=4, epochs=5) == 5 * (10 * 6 + 3 * 2) + 4 * 2
    base = dict(fwd=1e9, fwd_bwd=3e9, train=800, val=100, test=100)
    one, two = run_flops(**base, epochs=50), run_flops(**base, epochs=100)
    assert two - one == pytest.approx(50 * (800 * 3e9 + 100 * 1e9))  # each epoch adds the same
    doubled = {**base, 'train': 1600, 'val': 200, 'test': 200}
    assert run_flops(**doubled, epochs=100) == pytest.approx(2 * two)  # twice the images, twice the FLOPs


def test_runs_per_cell_is_the_planned_grid():
    n = runs_per_cell(PAPER_KEYS)
    assert n.sum() == len(plan_runs([1, 2, 3], PAPER_KEYS)) == 105
    assert n[('cityscapes', 'segnet')] == 8 + 3 and n[('nyuv2', 'unet')] == 7 + 3 and n[('oxford_pet', 'unetpp')] == 7
    assert runs_per_cell(PAPER_KEYS, tables=(1,)).sum() == 3 * 8


def made_up_profile(fwd=1e9, fwd_bwd=3e9):
    return pd.DataFrame([dict(model=m, data_key=k, fwd=fwd, fwd_bwd=fwd_bwd)
                         for k in DATASETS for m in ('segnet', 'unet', 'attunet', 'unetpp')])


def test_grid_cost_table_by_hand():
    t = grid_cost_table(made_up_profile(), epochs=100)
    body, total = t.iloc[:-1], t.iloc[-1]
    assert total.model == 'total' and total.runs == 105 and len(body) == 12
    expected = sum(35 * (100 * (s['train'] * 3e9 + s['val'] * 1e9) + s['test'] * 1e9)
                   for s in (split_sizes(d['pool']) for d in DATASETS.values()))
    assert total.pflop == pytest.approx(expected / 1e15)
    assert total.h100_h == pytest.approx(expected / (989e12 * 0.25) / 3600)
    assert body.h100_h.sum() == pytest.approx(total.h100_h)


def test_grid_cost_table_scales_with_epochs_and_images():
    p = made_up_profile()
    t1, t2 = grid_cost_table(p, epochs=10), grid_cost_table(p, epochs=20)
    test_part = sum(35 * split_sizes(d['pool'])['test'] * 1e9 for d in DATASETS.values()) / 1e15
    assert t2.pflop.iloc[-1] - test_part == pytest.approx(2 * (t1.pflop.iloc[-1] - test_part))
    pools = {k: 10 * 800 for k in DATASETS}  # pools with exact splits (6400 train, a multiple of 8)
    a, b = grid_cost_table(p, pools=pools), grid_cost_table(p, pools={k: 2 * v for k, v in pools.items()})
    assert b.pflop.iloc[-1] == pytest.approx(2 * a.pflop.iloc[-1])
    # twice the FLOPs per image, twice the cost
    assert grid_cost_table(made_up_profile(2e9, 6e9)).pflop.iloc[-1] == pytest.approx(2 * grid_cost_table(p).pflop.iloc[-1])


def test_gpu_hours_arithmetic():
    assert gpu_hours(989e12 * 0.25 * 3600) == pytest.approx(1.0)
    assert gpu_hours(1e18, peak_tflops=100, fraction=0.5) == pytest.approx(1e18 / 50e12 / 3600)
    assert gpu_hours(1e18, H100_SXM_TFLOPS['fp32'], 1.0) == pytest.approx(1e18 / 67e12 / 3600)
    assert H100_SXM_TFLOPS['bf16'] == 989.0 and H100_SXM_TFLOPS['fp32'] == 67.0


def test_activation_bytes_of_one_conv():
    conv = nn.Conv2d(3, 6, 3, padding=1, bias=False)
    x = torch.randn(4, 3, 8, 8)
    # the convolution saves its input (the weight is a parameter, not counted); the output (logits) is added
    assert activation_bytes_per_image(conv, x) == (3 + 6) * 8 * 8 * 4


def test_activation_bytes_count_shared_storage_once():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(inplace=True), nn.Conv2d(4, 2, 1, bias=False))
    x = torch.randn(2, 3, 8, 8)
    # input (3 ch); the first conv's output, overwritten by the in-place ReLU that saves it and read by the 2nd conv (4 ch, once); logits (2 ch)
    assert activation_bytes_per_image(net, x) == (3 + 4 + 2) * 8 * 8 * 4


def test_activation_bytes_are_per_image():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    # equal up to batch norm's per-channel statistics (saved once per batch, a few bytes)
    assert activation_bytes_per_image(net, torch.randn(2, 3, 16, 16)) == pytest.approx(
        activation_bytes_per_image(net, torch.randn(4, 3, 16, 16)), rel=1e-2)


def test_run_memory_bytes():
    assert run_memory_bytes(1e6, 1000, batch_size=8, overhead=1.5, context_bytes=0) == 16_000 + 12e6
    assert run_memory_bytes(0, 0) == 0.5 * GiB


def test_suggest_runs_per_device_rule():
    device = 80 * GiB  # 80 % of it: 64 GiB
    assert suggest_runs_per_device(10 * GiB, device, max_runs=99) == 6  # memory: floor(64 / 10)
    assert suggest_runs_per_device(10 * GiB, device) == 4  # compute cap
    assert suggest_runs_per_device(10 * GiB, device, cpu_cores=16) == 3  # 16 cores // 5 per run
    assert suggest_runs_per_device(10 * GiB, device, cpu_cores=4) == 1  # at least one when it fits
    assert suggest_runs_per_device(30 * GiB, device) == 2
    assert suggest_runs_per_device(32 * GiB, device) == 2 and suggest_runs_per_device(32.1 * GiB, device) == 1
    assert suggest_runs_per_device(70 * GiB, device) == 0  # does not fit into 80 %
    assert suggest_runs_per_device(70 * GiB, device, mem_fraction=0.9) == 1


def test_profile_table_small_models():
    p = profile_table(['segnet', 'unet'], {'a': dict(size=(64, 64), n_classes=3)}, preset='small')
    assert list(p.model) == ['segnet', 'unet'] and (p.fwd_bwd > 2 * p.fwd).all() and (p.act_bytes > 0).all()
    assert (p.params > 1e6).all()


def test_full_grid_on_meta_counts_all_runs():
    p = profile_table(device='meta', memory=False)  # the paper's models at full size; shapes only, no arithmetic
    t = grid_cost_table(p)
    assert t.runs.iloc[-1] == 105 and (t.pflop.iloc[:-1] > 0).all()
    seg = p.set_index(['model', 'data_key']).fwd_bwd
    # twice the pixels, twice the FLOPs, plus a little for the classifier's 20 outputs instead of 3
    assert 2 < seg[('segnet', 'cityscapes')] / seg[('segnet', 'oxford_pet')] < 2.05
    # the total nbs/06a_cost.ipynb stores (counted on the CPU): re-execute the notebook when this changes
    assert t.pflop.iloc[-1] == pytest.approx(8426.1, abs=0.1)


def test_achieved_tflops_is_flops_over_time():
    net, x = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1)), torch.randn(2, 3, 32, 32)
    tflops = achieved_tflops(net, x, repeats=2)
    assert 0 < tflops < 10 and math.isfinite(tflops)
