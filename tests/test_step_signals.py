"""Ctrl-C (SIGINT) and SIGTERM in every step of `pat-reproduce` (theory, benchmark, report): exit 130 or 143, the one line
that says what was kept, no traceback; the runs step is tested in test_reproduce_signals.py, a report rebuild in
test_report_swap.py."""
import os, signal, subprocess, sys, time
import pytest
from pat_nbdev.reproduce import kernels_started_by

STEP_ONLY = {'theory': ['runs', 'bench', 'report'], 'bench': ['theory', 'runs', 'report']}

@pytest.mark.parametrize('sig, code', [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.parametrize('step', list(STEP_ONLY))
def test_a_signal_in_a_step_stops_with_its_code(tmp_path, step, sig, code):
    p = subprocess.Popen([sys.executable, '-u', '-c', 'import sys; from pat_nbdev.reproduce import main; sys.exit(main(sys.argv[1:]))',
                          '--preset', 'tiny', '--out', str(tmp_path / 'out'), '--skip', *STEP_ONLY[step]],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'},
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # Ctrl-C reaches it from a background shell too
    lines = []
    for line in p.stdout:  # wait until the step has started
        lines.append(line)
        if line.startswith(f'== {step}'): break
    if step == 'theory':  # inside the step, its kernel started and at work (a signal during a kernel start is another case)
        deadline = time.monotonic() + 90
        while not kernels_started_by(p.pid) and time.monotonic() < deadline: time.sleep(0.2)
    time.sleep(3 if step == 'theory' else 6); p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    assert p.returncode == code, ''.join(lines) + out + err
    assert 'Traceback' not in out + err and ('interrupted' in err or 'stopped by SIGTERM' in err), err[-2000:]
