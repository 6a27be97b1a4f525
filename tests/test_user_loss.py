"A user's own loss, from a module outside the package, joins a tiny grid and every table of its report like a built-in one."
import os, subprocess, sys
from pathlib import Path
import pandas as pd

LOSS = '''import torch.nn as nn, torch.nn.functional as F

class PoweredCE(nn.Module):
    "Per-pixel cross-entropy raised to `power`."
    def __init__(self, ignore_index=255, power=2.0):
        super().__init__(); self.ignore_index, self.power = ignore_index, power
    def forward(self, logits, target):
        ce = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction='none')
        return ce[target != self.ignore_index].pow(self.power).mean()
'''

def test_user_loss_in_a_tiny_grid(tmp_path):
    (tmp_path / "mylosses.py").write_text(LOSS)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    code = "import sys; from pat_nbdev.reproduce import main; sys.exit(main(sys.argv[1:]))"
    p = subprocess.run([sys.executable, "-c", code, "--preset", "tiny", "--extra-loss", "mylosses:PoweredCE", "--engine", "inprocess",
                        "--jobs", "1", "--skip", "theory", "bench", "--out", str(out)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    assert "methods ['ce', 'pat', 'poweredce']" in p.stdout
    runs = pd.read_csv(out / "report" / "runs.csv")
    assert sorted(runs.method) == ["ce", "ce", "pat", "pat", "poweredce", "poweredce"]  # 2 seeds each
    assert "poweredce" in (out / "report" / "methods_synthetic3_segnet.md").read_text()
    paired = pd.read_csv(out / "report" / "paired.csv")
    assert set(paired[paired.reference == "pat"].baseline) == {"ce", "poweredce"}
    assert (out / "report" / "fig45_examples_synthetic3_segnet.png").exists()
