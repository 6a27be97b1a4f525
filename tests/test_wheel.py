"The package as a user installs it: a wheel (not editable) that carries its notebooks, and `pat-reproduce` run from outside the checkout."
import glob, json, os, shutil, subprocess, sys
from pathlib import Path
import pytest

REPO = Path(__file__).resolve().parents[1]

@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    "Build the wheel from the checkout and install it (without dependencies: those of this environment serve) into a temporary folder."
    tmp = tmp_path_factory.mktemp("wheel")
    src = shutil.copytree(REPO, tmp / "src", ignore=shutil.ignore_patterns(".venv", ".git", "build", "runs", "*.egg-info", "__pycache__"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist")],
                           capture_output=True, text=True, cwd=tmp)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = glob.glob(str(tmp / "dist" / "pat_nbdev-*.whl"))[0]
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp / "site"), wheel], capture_output=True, text=True)
    assert inst.returncode == 0, inst.stderr[-2000:]
    return tmp

def reproduce(site:Path, cwd:Path, *args, timeout=600):
    "`pat-reproduce ARGS` with the installed wheel first on the path (before the editable checkout), run in `cwd`."
    code = "import sys, pat_nbdev.reproduce as r, pat_nbdev.experiments as e; print('package:', e.PACKAGE); sys.exit(r.main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)

def test_wheel_holds_the_notebooks(installed):
    pkg = installed / "site" / "pat_nbdev"
    assert {p.name for p in (pkg / "notebooks").iterdir()} == {"train_run.ipynb", "report.ipynb", "03_theory.ipynb"}
    assert (pkg / "paper" / "table1_segnet.csv").exists()
    code = "import sys, pat_nbdev.datacli as d; print(len(d.read_manifest('vocalfolds')))"  # the manifest `pat-data download` checks against
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=installed, env={**os.environ, "PYTHONPATH": str(installed / "site")})
    assert (pkg / "manifests" / "vocalfolds.sha256").exists() and p.stdout.split() == ["1075"], p.stderr[-2000:]

def test_reproduce_dry_run_outside_the_checkout(installed):
    p = reproduce(installed / "site", installed, "--preset", "tiny", "--dry-run", "--out", str(installed / "out"))
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"package: {installed / 'site' / 'pat_nbdev'}" in p.stdout and "4 runs (2 seed(s))" in p.stdout

def test_reproduce_tiny_run_outside_the_checkout(installed):
    out = installed / "out"
    p = reproduce(installed / "site", installed, "--preset", "tiny", "--seeds", "1", "--skip", "theory", "bench", "report", "--out", str(out))
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    runs = sorted(out.glob("runs/*/*/*/metrics.json"))
    assert [r.parent.name for r in runs] == ["ce", "pat"] and all(json.loads(r.read_text())["test"] for r in runs)
    assert (runs[0].parent / "train_run.ipynb").exists()  # executed from the notebook the wheel carries
    assert str(REPO) not in p.stdout  # nothing points into the checkout
