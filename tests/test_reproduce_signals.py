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


def start_batch(tmp_path, marker, jobs=2):
    "A long tiny batch, `jobs` runs at once, each in a kernel (papermill); returns once they have all started training."
    out = tmp_path / 'out'
    p = subprocess.Popen([sys.executable, '-c', 'import sys; from pat_nbdev.reproduce import main; sys.exit(main(sys.argv[1:]))',
                          '--preset', 'tiny', '--epochs', '500', '--jobs', str(jobs), '--skip', 'theory', 'bench', 'report', '--out', str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, 'PAT_TEST_MARKER': marker},
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # Ctrl-C reaches it even from a background shell
    deadline = time.monotonic() + 300  # generous: a busy machine starts kernels slowly
    while len(list(out.glob('runs/**/history.csv'))) < jobs:
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()[1][-2000:] if p.poll() is not None else 'no run started'
        time.sleep(0.5)
    assert len(marked(marker)) >= 1 + 2 * jobs  # the command, the run processes, their kernels
    return p, out


def wait_gone(marker, seconds=15) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := marked(marker)) and time.monotonic() < deadline: time.sleep(0.3)
    return left


@pytest.mark.parametrize('jobs,sig', [(2, signal.SIGTERM), (1, signal.SIGTERM), (2, signal.SIGINT)])
def test_sigterm_stops_the_runs_and_says_how_to_resume(tmp_path, jobs, sig):
    "... in one line: with one job too (a kernel torn down mid-cell used to print zmq tracebacks), and for Ctrl-C (SIGINT)."
    marker = uuid.uuid4().hex
    p, out = start_batch(tmp_path, marker, jobs)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == {signal.SIGTERM: 143, signal.SIGINT: 130}[sig]
    said = {signal.SIGTERM: 'stopped by SIGTERM', signal.SIGINT: 'interrupted'}[sig]
    assert said in err and 'run the same command again to resume' in err and 'Traceback' not in err, err[-2000:]
    assert wait_gone(marker) == []


def test_sigkill_takes_the_runs_and_kernels_along(tmp_path):
    marker = uuid.uuid4().hex
    p, out = start_batch(tmp_path, marker)
    p.kill(); p.communicate(timeout=30)
    assert wait_gone(marker) == []
