"""The batch on this machine keeps one run process and one kernel per slot (issue 16): every run's results must be
bit-identical to the same run in a fresh kernel, and nothing a run leaves (names, RNG, threads, a failure, a dead
kernel) may reach the next one."""
import json, sys
from pathlib import Path
import pandas as pd
import pytest
import torch
from pat_nbdev.batch import job_slots, run_batch
from pat_nbdev.experiments import PRESETS, execute_run, plan_runs, run_config

TINY = PRESETS['tiny']
SCORES = ('test', 'best_val', 'best_epoch', 'class_pixel_counts')
CURVES = ('epoch', 'lr', 'train_loss', 'train_miou', 'val_miou', 'val_pix_acc', 'val_dice_err', 'val_ce')


def tiny_configs(runs_root) -> list[dict]:
    return [run_config(r, TINY, runs_root) for r in plan_runs([], list(TINY.datasets), TINY.seeds, TINY)]


def same_results(a: Path, b: Path):
    "Runs `a` and `b` scored, learned and saved the same weights, bit for bit (timings aside)."
    ma, mb = (json.loads((d / 'metrics.json').read_text()) for d in (a, b))
    assert {k: ma[k] for k in SCORES} == {k: mb[k] for k in SCORES}, (a, b)
    pd.testing.assert_frame_equal(pd.read_csv(a / 'history.csv')[list(CURVES)], pd.read_csv(b / 'history.csv')[list(CURVES)])
    wa, wb = (torch.load(d / 'best.pt', map_location='cpu', weights_only=False)['model'] for d in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), (a, b)


def test_runs_sharing_a_kernel_equal_runs_in_fresh_kernels(tmp_path):
    "Four runs one after another in one slot's kernel (the second and later ones in a used kernel), each against a new kernel."
    configs = tiny_configs(tmp_path / 'shared')
    res = run_batch(configs, tmp_path / 'shared', 'papermill', job_slots(1, cores=1))
    assert len(res['done']) == 4 and res['failed'] == {}
    for cfg in configs:
        fresh = tmp_path / 'fresh' / Path(cfg['out']).relative_to(tmp_path / 'shared')
        execute_run({**cfg, 'out': str(fresh), 'threads': 1}, 'papermill')  # papermill's own new kernel, as before slots kept one
        same_results(Path(cfg['out']), fresh)


LOSSES = '''import os, signal, numpy as np, torch.nn.functional as F, torch.nn as nn
class Crash(nn.Module):  # takes its kernel down with it, as running out of memory would
    def __init__(self, ignore_index=255): super().__init__()
    def forward(self, logits, target): os.kill(os.getpid(), signal.SIGKILL)
class Litter(nn.Module):  # leaves what a careless run leaves: global RNG draws, a changed thread count
    def __init__(self, ignore_index=255):
        super().__init__(); import torch; torch.set_num_threads(2); np.random.rand(100); torch.rand(100)
    def forward(self, logits, target): return F.cross_entropy(logits, target, ignore_index=255)
'''


@pytest.mark.parametrize('first', ['Crash', 'Litter', 'missing'])
def test_what_a_run_leaves_does_not_reach_the_next(tmp_path, monkeypatch, first):
    "A run that kills its kernel, litters global state, or fails (a missing module) before a CE run: that run is unchanged."
    (tmp_path / 'userlosses.py').write_text(LOSSES); monkeypatch.setenv('PYTHONPATH', str(tmp_path))
    ce = tiny_configs(tmp_path / 'after')[0]
    before = {**ce, 'out': str(tmp_path / 'after' / 'first'), 'loss': f"userlosses:{first}" if first != 'missing' else 'nomodule:X'}
    res = run_batch([before, ce], tmp_path / 'after', 'papermill', job_slots(1, cores=1))
    assert res['done'] == ([] if first != 'Litter' else ['first']) + [str(Path(ce['out']).relative_to(tmp_path / 'after'))], res
    if first != 'Litter':
        why = res['failed']['first']
        assert '\n' not in why and str(tmp_path / 'after' / 'first' / 'run.log') in why, why
        assert why.startswith({'Crash': 'DeadKernelError: Kernel died', 'missing': "ValueError: loss 'nomodule:X'"}[first]), why
    alone = tiny_configs(tmp_path / 'alone')[0]
    run_batch([alone], tmp_path / 'alone', 'papermill', job_slots(1, cores=1))
    same_results(Path(ce['out']), Path(alone['out']))


def test_time_left_shown_from_the_start(tmp_path, capsys):
    """pat-reproduce measures this machine before the runs and prints each step's expected time; the bar says the time left
    before the first run has ended (issue 16; a failed measurement: 08_reproduce)."""
    from pat_nbdev.reproduce import main
    args = ['--preset', 'tiny', '--seeds', '1', '--jobs', '1', '--skip', 'theory', 'bench', 'report', '--out']
    assert main([*args, str(tmp_path / 'a')]) == 0
    said = capsys.readouterr()
    line = next(l for l in said.out.splitlines() if l.startswith('measuring this machine'))
    assert 'expected on this machine: runs ' in line and '(2 runs, 1 at a time)' in line and 'in all' in line, line
    bar = said.err.replace('\r', '\n').splitlines()
    first = [l for l in bar if l.startswith('runs:   0%')]  # before any run has ended
    assert any('left' in l for l in first), first
