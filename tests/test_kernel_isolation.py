"""Kept kernels and users' losses: a loss that changes global state (torch's default dtype, grad mode, a generator seeded
at import, matplotlib's settings), or fails in its constructor, runs in a kernel of its own. Every built-in run of the
batch equals, bit for bit, a fresh `pat-train` of its config, and a failing user's loss is the run named, never a built-in one."""
import json, os, subprocess, sys, textwrap
from pathlib import Path
import pytest
from pat_nbdev.train import TrainConfig, train
from pat_nbdev.experiments import RESOLVED_BY_TRAINER
from pat_nbdev.train import RUNTIME_FIELDS

LEAKY = textwrap.dedent('''
    import torch, matplotlib
    import torch.nn.functional as F
    torch.set_default_dtype(torch.float64)          # at import: the next run's CE would meet float64 tensors
    matplotlib.rcParams["figure.dpi"] = 20          # and draw its figures at another size
    NOISE = torch.Generator().manual_seed(0)        # seeded once, at import
    class Leaky(torch.nn.Module):
        def __init__(self, **kw): super().__init__()
        def forward(self, logits, target):
            torch.randn(3, generator=NOISE); torch.manual_seed(123)  # the global stream moved, for whoever comes next
            return F.cross_entropy(logits.float(), target, ignore_index=255)
    class Broken(torch.nn.Module):
        def __init__(self, **kw):
            super().__init__(); torch.set_grad_enabled(False)  # grad mode off, then a failure of its own
            raise RuntimeError("Broken cannot be built")
''')

@pytest.fixture(scope='module')
def batch(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('isolation'); (tmp / 'leakylosses.py').write_text(LEAKY)
    out = tmp / 'out'
    p = subprocess.run([sys.executable, '-c', 'import sys; from pat_nbdev.reproduce import main; sys.exit(main(sys.argv[1:]))',
                        '--preset', 'tiny', '--jobs', '1', '--skip', 'theory', 'bench', 'report', '--out', str(out),
                        '--extra-loss', 'leaky=leakylosses:Leaky', '--extra-loss', 'broken=leakylosses:Broken'],
                       capture_output=True, text=True, timeout=1200,
                       env={**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': f"{tmp}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    return p, out

def test_only_the_users_losses_fail(batch):
    p, out = batch
    assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-3000:]
    failed = json.loads((out / 'runs' / 'failures.json').read_text())
    assert sorted(failed) == sorted(f'synthetic3/segnet/{m}' for m in ('leaky', 'leaky-seed1', 'broken', 'broken-seed1')), failed
    assert all('Broken cannot be built' in v for k, v in failed.items() if '/broken' in k), failed  # the run named is its own
    # (Leaky's float64 default dtype breaks its own runs: the user's to mend; what matters is that it reaches no other run)

@pytest.mark.parametrize('method', ['ce', 'pat', 'ce-seed1', 'pat-seed1'])
def test_builtin_runs_equal_a_fresh_pat_train(batch, method, tmp_path):
    p, out = batch
    run = next((out / 'runs').glob(f'*/*/{method}'))
    cfg = {k: v for k, v in json.loads((run / 'config.json').read_text()).items()
           if k not in (*RUNTIME_FIELDS, 'root') and not (k in RESOLVED_BY_TRAINER and v is None)}
    fresh = train(TrainConfig(**{**cfg, 'out': str(tmp_path / 'fresh'), 'progress': False}))
    assert json.loads((run / 'metrics.json').read_text())['test'] == json.loads(json.dumps(fresh['test'])), method
