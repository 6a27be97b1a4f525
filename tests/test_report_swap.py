"""A report is replaced, never destroyed: `pat-reproduce` builds it in a fresh folder and swaps it in whole, so a rebuild that
fails, or is stopped, leaves the previous report as it was and says in one line why it failed."""
import hashlib, os, signal, subprocess, sys, time
from pathlib import Path
import pytest

CMD = [sys.executable, '-c', 'import sys; from pat_nbdev.reproduce import main; sys.exit(main(sys.argv[1:]))', '--preset', 'tiny']
ENV = {**os.environ, 'OMP_NUM_THREADS': '1'}

def snapshot(report: Path) -> dict:
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(report.iterdir())}

@pytest.fixture(scope='module')
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp('swap') / 'out'
    p = subprocess.run([*CMD, '--out', str(out), '--skip', 'theory', 'bench', '--jobs', '1', '--engine', 'inprocess'],
                       capture_output=True, text=True, env=ENV, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return out

def test_a_failed_rebuild_keeps_the_previous_report(study):
    before = snapshot(study / 'report')
    history = next(study.glob('runs/**/history.csv')); good = history.read_text()
    history.write_text('epoch,val_miou\n1,not a number,and a stray field\n')  # garbled: the report cannot read it
    try: p = subprocess.run([*CMD, '--out', str(study), '--report-only'], capture_output=True, text=True, env=ENV, timeout=900)
    finally: history.write_text(good)
    assert p.returncode == 1, p.stdout[-2000:]
    failure = [l for l in p.stdout.splitlines() if 'report: FAILED' in l]
    assert len(failure) == 1 and 'Traceback' not in p.stdout + p.stderr, p.stdout[-3000:] + p.stderr[-3000:]
    assert f"{history} is not the history pat-train writes" in failure[0], failure  # the file that made it fail
    assert snapshot(study / 'report') == before and not (study / '.report-new').exists()

def test_a_stopped_rebuild_keeps_the_previous_report(study):
    before = snapshot(study / 'report')
    p = subprocess.Popen([*CMD, '--out', str(study), '--report-only'], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 300
    while not (study / '.report-new').exists():
        assert p.poll() is None and time.monotonic() < deadline, 'the rebuild ended before it could be stopped'
        time.sleep(0.05)
    time.sleep(1.0); p.send_signal(signal.SIGTERM); p.communicate(timeout=120)
    assert p.returncode == 143
    assert snapshot(study / 'report') == before and not (study / '.report-new').exists()

def test_a_good_rebuild_replaces_it(study):
    p = subprocess.run([*CMD, '--out', str(study), '--report-only'], capture_output=True, text=True, env=ENV, timeout=900)
    assert p.returncode == 0, p.stdout[-2000:]
    assert {'index.html', 'README.md', 'answer.md', 'runs.csv'} <= set(snapshot(study / 'report'))
