"""The project's own conventions: nbdev skips the heavy cells, the experiment notebooks are papermill-ready, the Makefile's
targets do what the README's workflow says, and the package metadata and the lock agree."""
import json, re, shutil, subprocess, sys
from configparser import ConfigParser
from pathlib import Path
import pytest
from nbdev.config import get_config
from nbdev.process import NBProcessor

REPO = Path(__file__).resolve().parents[1]
NBS = sorted((REPO / "nbs").rglob("*.ipynb"))

def code_cells(path):
    return [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]

def directives(path):
    "The `#|` directives of each code cell of `path`, as nbdev itself parses them."
    return [set(c.directives_) for c in NBProcessor(path, process=True).nb.cells if c.cell_type == "code"]

def test_tst_flags_are_space_separated():
    "nbdev_test splits tst_flags on whitespace: 'slow|gpu' would be one flag matching no cell, and every slow cell would run."
    assert {"slow", "gpu"} <= set(get_config().tst_flags.split())

@pytest.mark.parametrize("nb", NBS, ids=lambda p: str(p.relative_to(REPO / "nbs")))
def test_heavy_cells_use_known_flags(nb):
    known = set(get_config().tst_flags.split()) | {"export", "exports", "exporti", "hide", "default_exp", "eval:", "export:", "output:"}
    for found in directives(nb): assert found <= known, f"{nb.name}: unknown cell directive(s) {found - known}"

EXPERIMENTS = sorted((REPO / "nbs" / "experiments").glob("*.ipynb"))

@pytest.mark.parametrize("nb", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_notebooks_have_parseable_parameters(nb, caplog):
    "One cell tagged `parameters`, which papermill reads without a warning (else it cannot check or type the overrides)."
    from papermill.translators import PythonTranslator
    cells = [c for c in code_cells(nb) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1
    with caplog.at_level("WARNING"):
        names = [p.name for p in PythonTranslator.inspect({"source": "".join(cells[0]["source"])})]
    assert names and "Unable to parse" not in caplog.text, caplog.text


# ---------------------------------------------------------------- the workflow's targets and the package metadata
def make_dry_run(target):
    "The commands `make TARGET` would run (`make -n`), without running them."
    if shutil.which("make") is None: pytest.skip("make is not installed")
    return subprocess.run(["make", "-n", "--no-print-directory", target], cwd=REPO, capture_output=True, text=True, check=True).stdout

def test_make_help_lists_every_target_with_its_comment():
    "`make help` (and a bare `make`) prints each target the Makefile documents with `##`, that comment beside it."
    if shutil.which("make") is None: pytest.skip("make is not installed")
    documented = re.findall(r"^([a-z-]+):.*## (.*)$", (REPO / "Makefile").read_text(), flags=re.M)
    for argv in (["make", "--no-print-directory", "help"], ["make", "--no-print-directory"]):
        out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=True).stdout.splitlines()
        assert [l.split()[1] for l in out] == [t for t, _ in documented] and all(c in l for l, (_, c) in zip(out, documented)), out
    assert {"install", "test", "reproduce", "help"} <= {t for t, _ in documented}

def test_make_clean_keeps_runs():
    "`make clean` used to delete runs/ (all of `make reproduce`'s results); only `make clean-runs` does."
    assert "runs" not in make_dry_run("clean").split()
    assert make_dry_run("clean-runs").split() == ["rm", "-rf", "runs"]

def test_make_prepare_exports_cleans_writes_readme_and_runs_the_notebooks():
    steps = [line for line in make_dry_run("prepare").splitlines() if "pip install" not in line]
    order = [next(i for i, line in enumerate(steps) if key in line)
             for key in ("nbdev_export", "nbdev_clean", "make_readme.py", "nbdev_test")]
    assert order == sorted(order), steps

def settings():
    config = ConfigParser(delimiters=["="]); config.read(REPO / "settings.ini", encoding="utf-8")
    return config["DEFAULT"]

def test_development_status_is_nbdevs():
    "settings.ini's `status` indexes nbdev's 7-item list ('1 - Planning' ... '7 - Inactive'); a 6-item one made 3 'Production/Stable'."
    out = subprocess.run([sys.executable, "setup.py", "--classifiers"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    status = [line for line in out.splitlines() if line.startswith("Development Status")]
    names = "Planning|Pre-Alpha|Alpha|Beta|Production/Stable|Mature|Inactive"
    assert len(status) == 1 and re.fullmatch(rf"Development Status :: \d - ({names})", status[0]), status
    assert int(status[0].split(":: ")[1][0]) == int(settings()["status"]) + 1

def test_dev_requirements_pin_what_the_lock_installs():
    "The nbdev trio is pinned twice (settings.ini for `pip install .[dev]`, requirements.lock for `make install`): the same versions."
    lock = dict(line.split("==") for line in (REPO / "requirements.lock").read_text().splitlines() if "==" in line)
    pins = dict(req.split("==") for req in settings()["dev_requirements"].split() if "==" in req)
    assert {"nbdev", "fastcore", "execnb"} <= set(pins)
    assert {k: lock.get(k) for k in pins} == pins

def test_make_lab_serves_the_notebooks_as_root_too(tmp_path):
    "`make lab` as root (the usual case in a container) starts the server, with a notice, and serves a notebook over HTTP."
    import os, socket, signal, time, urllib.request
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    args = f"LAB_ARGS=--no-browser --port={port} --ServerApp.token= --ServerApp.password="
    lab = subprocess.Popen(["make", "--no-print-directory", "lab", args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, start_new_session=True, env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path)})
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents/00_data.ipynb?content=0", timeout=2) as r:
                    served = json.loads(r.read()); break
            except OSError: time.sleep(0.5)
        else: raise AssertionError("no server")
    finally:
        os.killpg(lab.pid, signal.SIGTERM); out = lab.communicate(timeout=60)[0]
    assert served["name"] == "00_data.ipynb" and served["type"] == "notebook", served
    assert ("--allow-root" in out) == (os.getuid() == 0), out[-2000:]

def test_stage_study_outside_a_git_checkout_says_so_in_one_line(tmp_path):
    run = tmp_path / "study" / "runs" / "a"; run.mkdir(parents=True)
    for name in ("config.json", "metrics.json", "provenance.json"):
        shutil.copy2(REPO / "reports" / "camvid-study" / "runs" / "camvid" / "unet" / "ce" / name, run / name)
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "stage_study.py"), "study"], cwd=tmp_path, capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "GIT_CEILING_DIRECTORIES": str(tmp_path)})
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and "expected a study inside a git checkout" in p.stderr, p.stderr
