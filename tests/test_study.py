"""The committed CamVid study (reports/camvid-study): its runs are the study preset's own, name no path of the machine that
made them, and a fresh clone rebuilds the report from their small files alone, without the dataset."""
import json, os, shutil, subprocess, sys, time
from pathlib import Path
import pytest
from pat_nbdev.experiments import COMMITTED_RUN_FILES, PRESETS, plan_runs, plan_status, run_config, run_folders

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / 'reports' / 'camvid-study'
PRESET = 'camvid-study'


@pytest.fixture(scope='module')
def runs() -> list[Path]:
    found = run_folders(STUDY / 'runs')
    if not found: pytest.skip(f"no committed run under {STUDY.relative_to(REPO)}/runs yet")
    return found


def study_configs(runs_root) -> list[dict]:
    preset = PRESETS[PRESET]
    return [run_config(r, preset, runs_root, need_root=False) for r in plan_runs([], list(preset.datasets), preset.seeds, preset)]


def test_committed_runs_are_the_studys_own(runs):
    status = plan_status(study_configs(STUDY / 'runs'), STUDY / 'runs')
    assert status['stale'] == {} and status['foreign'] == []
    assert sorted(map(Path, status['finished'])) == runs


def test_committed_runs_record_code_threads_and_no_machine_path(runs):
    for r in runs:
        prov = json.loads((r / 'provenance.json').read_text())
        assert prov['threads'] == 1 and (prov.get('commit') or prov.get('package')), r
        cfg, data = json.loads((r / 'config.json').read_text()), json.loads((r / 'metrics.json').read_text())['data']
        for where, value in [*((k, cfg.get(k)) for k in ('out', 'root', 'cache')), *((k, data.get(k)) for k in ('root', 'cache'))]:
            assert value is None or not os.path.isabs(value), f"{r}: {where} = {value}"


def test_report_rebuilds_from_the_committed_files_alone(runs, tmp_path):
    "What a fresh clone has: the runs' small files, no dataset, no checkpoint; `--report-only` builds the whole report."
    out = tmp_path / 'study'
    for r in runs:
        dest = out / 'runs' / r.relative_to(STUDY / 'runs'); dest.mkdir(parents=True)
        for name in COMMITTED_RUN_FILES:
            if (r / name).exists(): shutil.copy2(r / name, dest / name)
    start = time.perf_counter()
    p = subprocess.run([sys.executable, '-c', 'import sys; from pat_nbdev.reproduce import main; sys.exit(main(sys.argv[1:]))',
                        '--preset', PRESET, '--out', str(out), '--report-only'], capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, 'PAT_SHARED': str(tmp_path / 'no-data'), 'OMP_NUM_THREADS': '1'})
    print(f"report rebuilt from {len(runs)} committed runs in {time.perf_counter() - start:.1f} s")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    report = out / 'report'
    assert (report / 'methods_camvid_unet.md').exists() and (report / 'runs.csv').exists()
    answers = [l for l in (report / 'answer.md').read_text().splitlines() if l.startswith('- camvid, unet: PAT')]
    assert len(answers) == 2 and all(' ce ' in l for l in answers), answers  # the headline: each PAT against CE
    # whole without the data: every figure of the committed report drawn anew (Fig. 2 from the recorded counts, Figs. 4-5
    # from the images the runs keep), none merely kept from before, and the README lists each
    assert sorted(f.name for f in report.glob('*.png')) == sorted(f.name for f in (STUDY / 'report').glob('*.png'))
    assert 'kept from the previous report' not in p.stdout
    readme = (report / 'README.md').read_text()
    assert '[fig2_imbalance.png]' in readme and '[fig45_examples_camvid_unet.png]' in readme
    assert 'Traceback' not in p.stdout + p.stderr
