"""`pat-reproduce` stopped by SIGTERM or SIGKILL takes its run processes and their kernels with it; SIGTERM says what was
kept and how to resume."""
import os, signal, subprocess, sys, time, uuid
from pathlib import Path
import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith('linux'), reason='process tracking through /proc (Linux only)')


def marked(marker: str) -> list[int]:
    "Live processes whose environment carries `marker` (inherited by the run processes and their kernels)."
    found = []
    for d in Path('/proc').iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid(): continue
        try:
            if marker.encode() in (d / 'environ').read_bytes() and (d / 'stat').read_text().split()[2] != 'Z': found.append(int(d.name))
        except OSError: pass
    return found


def start_batch(tmp_path, marker):
    "A long tiny batch, two runs at once, each in a kernel (papermill); returns once both runs have started training."
    out = tmp_path / 'out'
    p = subprocess.Popen([sys.executable, '-c', 'import sys; from pat_nbdev.reproduce import main; sys.exit(main(sys.argv[1:]))',
                          '--preset', 'tiny', '--epochs', '500', '--jobs', '2', '--skip', 'theory', 'bench', 'report', '--out', str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, 'PAT_TEST_MARKER': marker})
    deadline = time.monotonic() + 120
    while len(list(out.glob('runs/**/history.csv'))) < 2:
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()[1][-2000:] if p.poll() is not None else 'no run started'
        time.sleep(0.5)
    assert len(marked(marker)) >= 5  # the command, two run processes, two kernels
    return p, out


def wait_gone(marker, seconds=15) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := marked(marker)) and time.monotonic() < deadline: time.sleep(0.3)
    return left


def test_sigterm_stops_the_runs_and_says_how_to_resume(tmp_path):
    marker = uuid.uuid4().hex
    p, out = start_batch(tmp_path, marker)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143
    assert 'stopped by SIGTERM' in err and 'run the same command again to resume' in err
    assert wait_gone(marker) == []


def test_sigkill_takes_the_runs_and_kernels_along(tmp_path):
    marker = uuid.uuid4().hex
    p, out = start_batch(tmp_path, marker)
    p.kill(); p.communicate(timeout=30)
    assert wait_gone(marker) == []
