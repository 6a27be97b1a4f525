"""`pat-reproduce --launcher slurm` on a real one-node Slurm cluster (`scripts/slurm/up.sh`, with accounting): the batch as
one job array, a detached batch, a requeued task resuming bit for bit, cancelled, failing and timed-out tasks, a refused
submission, two commands on one --out. Skipped, with the reason, unless PAT_SLURM=1 (`.ci/run` sets it once the cluster is
up) and `sinfo` answers. Each test appends its wall time (and what else it measured) to $PAT_SLURM_DIR/test-timings.jsonl."""
import json, os, re, shutil, subprocess, sys, time
from pathlib import Path
import pandas as pd
import pytest

SLURM_DIR = Path(os.environ.get('PAT_SLURM_DIR', '/tmp/pat-slurm'))
os.environ.setdefault('SLURM_CONF', str(SLURM_DIR / 'slurm.conf'))

def _no_cluster() -> str:
    "Why these tests cannot run here ('' when they can)."
    if os.environ.get('PAT_SLURM') != '1': return 'no Slurm cluster: PAT_SLURM=1 is not set (.ci/run sets it after scripts/slurm/up.sh)'
    if not shutil.which('sinfo'): return 'no Slurm cluster: sinfo is not on the PATH (scripts/slurm/up.sh installs it)'
    r = subprocess.run(['sinfo', '-h', '-p', 'debug', '-o', '%T'], capture_output=True, text=True, timeout=30)
    if r.returncode or not r.stdout.strip(): return f"no Slurm cluster answers: sinfo says {(r.stderr or r.stdout).strip()[:200]!r}"
    return ''

WHY_NOT = _no_cluster()
pytestmark = pytest.mark.skipif(bool(WHY_NOT), reason=WHY_NOT)

REPRODUCE = str(Path(sys.executable).parent / 'pat-reproduce')
SLURM = ['--launcher', 'slurm', '--slurm-partition', 'debug', '--slurm-gpus-per-run', '0', '--slurm-cpus-per-run', '1',
         '--jobs', '2']
EPOCHS = ['--epochs', '20']  # tiny runs long enough to be requeued after their first checkpoint
ENV = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}

def reproduce(*args, timeout=1800, env=None) -> subprocess.CompletedProcess:
    "`pat-reproduce ARGS`, waited for; its stdout and stderr together in `.stdout`."
    return subprocess.run([REPRODUCE, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env or ENV, timeout=timeout)

def start(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen([REPRODUCE, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env or ENV)

def wait_for(cond, timeout:float, what:str, every:float=0.1):
    t0 = time.monotonic()
    while not (v := cond()):
        if time.monotonic() - t0 > timeout: raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(every)
    return v

def slurm(*cmd) -> str: return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=60).stdout

def squeue(job:str, *states) -> list[str]:
    "The lines `squeue` shows for `job` (an array id, or `<array>_<index>`): 'id name state'."
    return slurm('squeue', '-h', '-j', job, *(['-t', ','.join(states)] if states else []), '-o', '%i %j %T').split('\n')[:-1]

def sacct(array:str, every_attempt=False) -> list[tuple]:
    "(task id, job name, state) of each task of `array` (of each attempt of each, with `every_attempt`)."
    out = slurm('sacct', '-X', '-n', '-P', *(['-D'] if every_attempt else []), '-j', array, '-o', 'JobID,JobName,State')
    return [tuple(l.split('|')) for l in out.splitlines() if l]

def submitted(out:Path) -> dict: return json.loads((out / 'slurm' / 'submitted.json').read_text())
def job_of(out:Path, run:str) -> str: return submitted(out)['runs'][run]['job_id']

def record(test:str, t0:float, **measured):
    "Append the test's wall time and `measured` to the timings file (.ci/run prints it)."
    line = dict(test=test, wall_s=round(time.monotonic() - t0, 1), **measured)
    with open(SLURM_DIR / 'test-timings.jsonl', 'a') as f: f.write(json.dumps(line) + '\n')

@pytest.fixture
def out(tmp_path):
    "An output folder; whatever its jobs left queued or running is cancelled after the test."
    yield tmp_path / 'out'
    path = tmp_path / 'out' / 'slurm' / 'submitted.json'
    if path.exists(): subprocess.run(['scancel', *[a['id'] for a in json.loads(path.read_text())['arrays']]], capture_output=True)

def metrics(out:Path, run:str) -> dict: return json.loads((out / 'runs' / run / 'metrics.json').read_text())

def history(out:Path, run:str) -> pd.DataFrame:
    "history.csv without its timings (seconds, images per second, memory): what must be equal bit for bit."
    h = pd.read_csv(out / 'runs' / run / 'history.csv')
    return h[[c for c in h.columns if not re.search(r'seconds|per_s|mem', c)]]

@pytest.fixture(scope='module')
def local_grid(tmp_path_factory):
    "The tiny grid with --launcher local, one torch thread per run (as --slurm-cpus-per-run 1 gives): the reference."
    t0, out = time.monotonic(), tmp_path_factory.mktemp('local') / 'out'
    r = reproduce('--preset', 'tiny', *EPOCHS, '--launcher', 'local', '--jobs', str(os.cpu_count()), '--out', str(out),
                  '--skip', 'theory', 'bench')
    assert r.returncode == 0, r.stdout[-3000:]
    record('local_grid (fixture)', t0)
    return out

RUNS = ['synthetic3/segnet/ce', 'synthetic3/segnet/pat', 'synthetic3/segnet/ce-seed1', 'synthetic3/segnet/pat-seed1']

def test_array_matches_local(out, local_grid):
    "The tiny grid as ONE job array on Slurm: every run finished, tasks named after their runs, the report's tables equal to local's."
    t0 = time.monotonic()
    r = reproduce('--preset', 'tiny', *EPOCHS, *SLURM, '--out', str(out), '--skip', 'theory', 'bench')
    assert r.returncode == 0, r.stdout[-3000:]
    sub = submitted(out)
    (array,) = sub['arrays']
    assert array['runs'] == 4 and sorted(sub['runs']) == sorted(RUNS)
    assert {rec['job_id'].split('_')[0] for rec in sub['runs'].values()} == {array['id']}
    tasks = {t: (name, state) for t, name, state in sacct(array['id'])}  # each task named after its run in squeue and sacct
    assert tasks == {sub['runs'][run]['job_id']: (f'pat:{run}', 'COMPLETED') for run in RUNS}, tasks
    for run in RUNS:
        assert metrics(out, run)['test'] == metrics(local_grid, run)['test'], run  # bit for bit
        assert metrics(out, run)['run']['threads'] == metrics(local_grid, run)['run']['threads'] == 1
    tables = sorted(p.name for p in (local_grid / 'report').glob('*.csv'))
    assert tables and tables == sorted(p.name for p in (out / 'report').glob('*.csv'))
    for name in tables:
        a, b = pd.read_csv(local_grid / 'report' / name), pd.read_csv(out / 'report' / name)
        keep = [c for c in a.columns if not re.search(r'time|seconds|_s$|per_s|run_dir|path|memory', c)]
        pd.testing.assert_frame_equal(a[keep], b[keep], obj=name)
    record('test_array_matches_local', t0, array=array['id'], tables=len(tables))

def test_detach_squeue_then_report_only(out):
    "--detach submits and returns; squeue shows the array; --report-only once it has ended builds the report."
    t0, opts = time.monotonic(), ['--preset', 'tiny', '--seeds', '1', '--epochs', '1', '--engine', 'inprocess', '--out', str(out)]
    r = reproduce(*opts, *SLURM, '--detach', '--skip', 'theory', 'bench', timeout=300)
    assert r.returncode == 0, r.stdout[-3000:]
    (array,) = submitted(out)['arrays']
    a = array['id']
    assert f"Submitted 2 runs as Slurm job array {a}" in r.stdout and f"squeue -j {a}" in r.stdout
    assert '--report-only' in r.stdout and not (out / 'report').exists()  # detached: no report yet
    shown = squeue(a)
    assert shown and all(line.split()[0].startswith(f'{a}_') for line in shown), shown
    wait_for(lambda: not squeue(a), 900, f'array {a} to end', every=1)
    rep = reproduce(*opts, '--skip', 'theory', 'bench', '--report-only', timeout=900)
    assert rep.returncode == 0, rep.stdout[-3000:]
    assert list((out / 'report').glob('*.csv')) and 'not finished' not in rep.stdout
    record('test_detach_squeue_then_report_only', t0, array=a)

def test_requeued_task_resumes_bit_identical(out, local_grid):
    "`scontrol requeue` of a running task (as preemption does): pat-reproduce waits for its next attempt, resumed from the checkpoint."
    t0, run = time.monotonic(), 'synthetic3/segnet/ce'
    p = start('--preset', 'tiny', '--seeds', '1', *EPOCHS, *SLURM, '--out', str(out), '--skip', 'theory', 'bench', 'report')
    try:
        wait_for(lambda: (out / 'runs' / run / 'last.pt').exists() or p.poll() is not None, 1200, f'a checkpoint of {run}', every=0.05)
        assert p.poll() is None, p.stdout.read()[-3000:]
        job = job_of(out, run)
        at = time.monotonic(); slurm('scontrol', 'requeue', job)
        wait_for(lambda: not squeue(job, 'RUNNING'), 120, f'{job} to leave RUNNING')
        wait_for(lambda: squeue(job, 'RUNNING'), 300, f'{job} to run again')
        delay = time.monotonic() - at
        text, _ = p.communicate(timeout=1800)
    finally:
        if p.poll() is None: p.kill()
    assert p.returncode == 0, text[-3000:]
    assert 'failed' not in text and 'DeadKernelError' not in text, text[-3000:]
    m = metrics(out, run)
    assert m['run']['resumed_from_epoch'] >= 1  # the second attempt went on from the checkpoint
    attempts = [s for t, _, s in sacct(job.split('_')[0], every_attempt=True) if t == job]
    assert attempts == ['REQUEUED', 'COMPLETED'], attempts
    assert m['test'] == metrics(local_grid, run)['test']  # bit for bit the uninterrupted run
    pd.testing.assert_frame_equal(history(out, run), history(local_grid, run))
    record('test_requeued_task_resumes_bit_identical', t0, requeue_to_running_again_s=round(delay, 1),
           resumed_from_epoch=m['run']['resumed_from_epoch'])

BROKEN_LOSS = '''
import numpy as np, torch.nn as nn
class FromFile(nn.Module):
    "A loss whose class weights come from a file that is not there."
    def __init__(self, ignore_index=255, path='/nonexistent/pat-class-weights.npy'):
        super().__init__(); self.w = np.load(path)
'''

def test_cancelled_and_failing_runs_named_then_rerun_submits_only_them(out, tmp_path):
    "A cancelled task and a run that raises are named with their state or one-line error and their log; the rerun submits only them."
    t0 = time.monotonic()
    (tmp_path / 'mod').mkdir(); (tmp_path / 'mod' / 'pat_broken_loss.py').write_text(BROKEN_LOSS)
    env = {**ENV, 'PYTHONPATH': str(tmp_path / 'mod')}  # sbatch passes the environment on to the jobs
    args = ['--preset', 'tiny', '--seeds', '1', *EPOCHS, '--extra-loss', 'fromfile=pat_broken_loss:FromFile', *SLURM, '--out', str(out),
            '--skip', 'theory', 'bench', 'report']
    cancelled, broken, fine = 'synthetic3/segnet/ce', 'synthetic3/segnet/fromfile', 'synthetic3/segnet/pat'
    p = start(*args, env=env)
    try:
        wait_for(lambda: (out / 'slurm' / 'submitted.json').exists() or p.poll() is not None, 300, 'the submission')
        job = job_of(out, cancelled)
        wait_for(lambda: squeue(job, 'RUNNING') or p.poll() is not None, 600, f'{job} to run')
        slurm('scancel', job)
        text, _ = p.communicate(timeout=1800)
    finally:
        if p.poll() is None: p.kill()
    assert p.returncode == 1, text[-3000:]
    assert 'Traceback' not in text, text[-3000:]
    lines = {run: next((l for l in text.splitlines() if l.startswith(f'  {run}: ')), '') for run in (cancelled, broken)}
    logs = {run: Path(re.search(r'\(log: (.*)\)$', lines[run]).group(1)) for run in lines}
    assert 'CANCELLED' in lines[cancelled] and logs[cancelled].exists(), lines[cancelled]
    assert "FileNotFoundError: [Errno 2] No such file or directory: '/nonexistent/pat-class-weights.npy'" in lines[broken], lines[broken]
    assert logs[broken].exists() and 'Traceback' in logs[broken].read_text()  # the whole traceback is in the log
    assert json.loads((out / 'runs' / 'failures.json').read_text()).keys() == {cancelled, broken}
    first = submitted(out)
    again = reproduce(*args, env=env)
    assert '3 runs: 1 finished and kept, 2 to submit' in again.stdout, again.stdout[-3000:]
    second = submitted(out)
    assert len(second['arrays']) == 2 and second['arrays'][1]['runs'] == 2
    assert second['runs'][fine] == first['runs'][fine]  # not submitted again
    assert metrics(out, cancelled)['test'] and again.returncode == 1  # the cancelled run finished; the broken one fails again
    record('test_cancelled_and_failing_runs_named_then_rerun_submits_only_them', t0)

def test_time_limit_requeues_then_names_the_run(out):
    "Runs longer than --slurm-time: each is requeued once (--slurm-requeues 1), then named as past its time, with its log."
    t0 = time.monotonic()  # a one-minute limit, and Slurm's warning 10 s before it rather than submitit's 90 s: seconds, not minutes
    r = reproduce('--preset', 'tiny', '--seeds', '1', '--epochs', '100000', '--engine', 'inprocess', *SLURM, '--slurm-time', '1',
                  '--slurm-requeues', '1', '--slurm-extra', 'signal=USR2@10', '--out', str(out), '--skip', 'theory', 'bench', 'report')
    assert r.returncode == 1, r.stdout[-3000:]
    assert 'Traceback' not in r.stdout, r.stdout[-3000:]
    for run in ('synthetic3/segnet/ce', 'synthetic3/segnet/pat'):
        line = next((l for l in r.stdout.splitlines() if l.startswith(f'  {run}: ')), '')
        assert line.startswith(f'  {run}: TimeoutError: stopped by its Slurm time limit') and '--slurm-time' in line, line
        assert Path(re.search(r'\(log: (.*)\)$', line).group(1)).exists()
        job = job_of(out, run)
        attempts = [s for t, _, s in sacct(job.split('_')[0], every_attempt=True) if t == job]
        # the last attempt: submitit's handler raises (FAILED), or, on a busy machine, Slurm's kill comes first (TIMEOUT); same line
        assert attempts in (['REQUEUED', 'FAILED'], ['REQUEUED', 'TIMEOUT']), attempts
        assert ('on every attempt' in line) == (attempts[-1] == 'FAILED'), line
    record('test_time_limit_requeues_then_names_the_run', t0)

def test_refused_submission_is_one_line(out):
    "sbatch's refusal (a GPU on a cluster without one, an unknown partition): one line with its reason, exit 1, no later step."
    t0 = time.monotonic()
    for opts, reason in ((['--slurm-gpus-per-run', '1'], 'Invalid generic resource (gres) specification'),
                         (['--slurm-gpus-per-run', '0', '--slurm-partition', 'nope'], 'invalid partition specified: nope')):
        r = reproduce('--preset', 'tiny', '--launcher', 'slurm', *opts, '--out', str(out), '--skip', 'theory', timeout=300)
        assert r.returncode == 1, r.stdout[-3000:]
        last = r.stdout.strip().splitlines()[-1]
        assert last.startswith('pat-reproduce: sbatch refused the job array of 4 run(s): ') and reason in last, r.stdout[-3000:]
        assert 'Traceback' not in r.stdout and '== bench' not in r.stdout and '== report' not in r.stdout, r.stdout[-3000:]
        assert not (out / 'slurm' / 'submitted.json').exists() and (out / 'slurm' / 'refused.sbatch').exists()
    record('test_refused_submission_is_one_line', t0)

def test_second_reproduce_on_same_out_refuses(out):
    "Two pat-reproduce on one --out at once: the second refuses in one line and submits nothing."
    t0 = time.monotonic()
    args = ['--preset', 'tiny', '--seeds', '1', '--epochs', '150', '--engine', 'inprocess', *SLURM, '--out', str(out),
            '--skip', 'theory', 'bench', 'report']  # 150 epochs (about 45 s a run on a busy 2-core machine): the first holds --out well past the second's start
    p = start(*args)
    try:
        wait_for(lambda: (out / 'slurm' / 'submitted.json').exists() or p.poll() is not None, 300, 'the first submission')
        second = reproduce(*args, timeout=120)
        last = second.stdout.strip().splitlines()[-1]
        assert second.returncode == 2 and re.search(r'is in use by pat-reproduce --preset tiny \(pid \d+', last), second.stdout[-3000:]
        assert len(submitted(out)['arrays']) == 1
        text, _ = p.communicate(timeout=900)
        assert p.returncode == 0, text[-3000:]
    finally:
        if p.poll() is None: p.kill()
    record('test_second_reproduce_on_same_out_refuses', t0)
