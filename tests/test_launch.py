"""pat_nbdev.launch: the batch as one submitit job array, run end to end by submitit's LocalExecutor; the Slurm side
(sbatch script, job ids, states, a dead job) checked against submitit's own mock of sbatch/sacct/srun, without a cluster."""
import argparse, json, os, subprocess, sys, threading, time
from pathlib import Path
from unittest import mock
import pytest
import submitit
from submitit.core.test_core import MockedSubprocess  # what submitit's own tests use to stand in for Slurm's commands
from submitit.core.utils import FailedJobError
from submitit.slurm.slurm import SlurmInfoWatcher
from pat_nbdev.experiments import PRESETS, Run, run_config, run_finished
from pat_nbdev.launch import (SubmissionRefused, add_launch_args, job_error, launch_batch, launch_status, launcher_from_args,
                              make_executor, report_command, sbatch_script)

TINY = PRESETS['tiny']

def grid(out, losses=('ce', 'pat'), **kw):
    return [run_config(Run('synthetic3', 'segnet', loss, **kw), TINY, out / 'runs') for loss in losses]

def names(configs, out): return [str(Path(c['out']).relative_to(out / 'runs')) for c in configs]

def local(out, **kw): return make_executor('local', out / 'slurm', gpus_per_run=0, time_min=10, **kw)

def read(path): return json.loads(Path(path).read_text())

def job_dirs(out): return sorted(p.name for p in (out / 'slurm').iterdir() if p.is_dir())

def test_local_array_end_to_end(tmp_path, capsys):
    "Two runs as one array of the LocalExecutor, both at once: both finish; submitting again submits nothing."
    configs = grid(tmp_path)
    res = launch_batch(configs, tmp_path, local(tmp_path), engine='inprocess', max_parallel=2)
    assert sorted(res['done']) == names(configs, tmp_path) and res['failed'] == {}
    assert all(run_finished(c['out']) for c in configs)
    threads = max(1, (os.cpu_count() or 1) // 2)  # a share of the cores each, as run_batch's slots
    assert all(read(Path(c['out']) / 'metrics.json')['run']['threads'] == threads for c in configs)
    sub = read(tmp_path / 'slurm' / 'submitted.json')
    assert sorted(sub['runs']) == names(configs, tmp_path) and [a['runs'] for a in sub['arrays']] == [2]
    assert all(Path(r['log']).exists() and r['launcher'] == 'local' for r in sub['runs'].values())
    assert read(tmp_path / 'runs' / 'failures.json') == {}
    before = job_dirs(tmp_path)
    capsys.readouterr()
    again = launch_batch(configs, tmp_path, local(tmp_path), engine='inprocess', max_parallel=2)
    assert sorted(again['done']) == names(configs, tmp_path) and again['failed'] == {}
    assert job_dirs(tmp_path) == before and read(tmp_path / 'slurm' / 'submitted.json') == sub
    assert '2 finished and kept, 0 to submit' in capsys.readouterr().out

def test_local_papermill_run(tmp_path):
    "The default engine: the job executes train_run.ipynb with papermill and leaves the executed notebook; a run that raises is one line."
    t0 = time.perf_counter()
    (cfg,) = grid(tmp_path, ('ce',))
    bad = run_config(Run('synthetic3', 'segnet', 'pat', method='pat-bogus', kw=(('bogus', 1),)), TINY, tmp_path / 'runs')
    res = launch_batch([cfg, bad], tmp_path, local(tmp_path), engine='papermill', max_parallel=2)
    assert res['done'] == ['synthetic3/segnet/ce'] and list(res['failed']) == ['synthetic3/segnet/pat-bogus']
    assert run_finished(cfg['out']) and (Path(cfg['out']) / 'train_run.ipynb').exists()
    why = res['failed']['synthetic3/segnet/pat-bogus']  # the run's own error, not papermill's wrapper (whose text has rules of dashes)
    assert why.startswith('ValueError: bad hyper-parameters') and "unknown keyword(s) bogus" in why, why
    assert time.perf_counter() - t0 < 180

def test_failed_run_named_with_its_log(tmp_path):
    "A run that raises is reported with its error line and its log; one at a time, the second job waits for the first."
    (ok,) = grid(tmp_path, ('ce',))
    bad = run_config(Run('synthetic3', 'segnet', 'pat', method='pat-bogus', kw=(('bogus', 1),)), TINY, tmp_path / 'runs')
    res = launch_batch([bad, ok], tmp_path, local(tmp_path), engine='inprocess', max_parallel=1)
    assert res['done'] == ['synthetic3/segnet/ce'] and list(res['failed']) == ['synthetic3/segnet/pat-bogus']
    why = res['failed']['synthetic3/segnet/pat-bogus']
    assert why.startswith('ValueError: bad hyper-parameters') and "unknown keyword(s) bogus" in why
    log = Path(why.rsplit(' (log: ', 1)[1][:-1])
    sub = read(tmp_path / 'slurm' / 'submitted.json')
    assert str(log) == sub['runs']['synthetic3/segnet/pat-bogus']['log'] and 'Traceback' in log.read_text()
    assert read(tmp_path / 'runs' / 'failures.json') == res['failed']
    first, second = (submitit.LocalJob(tmp_path / 'slurm' / '%j', sub['runs'][n]['job_id']) for n in ('synthetic3/segnet/pat-bogus', 'synthetic3/segnet/ce'))
    assert first.paths.result_pickle.stat().st_mtime <= second.paths.submitted_pickle.stat().st_mtime  # never two at once
    assert launch_status(tmp_path) == dict(done=['synthetic3/segnet/ce'], failed=res['failed'], running={})

def test_job_error_of_a_plain_function(tmp_path):
    ex = local(tmp_path)
    bad, good = ex.submit(int, 'x'), ex.submit(int, '7')
    bad.wait(); good.wait()
    assert job_error(bad) == f"ValueError: invalid literal for int() with base 10: 'x' (log: {bad.paths.stderr})"
    assert job_error(good) is None

def test_detached_needs_slurm(tmp_path):
    with pytest.raises(ValueError, match='needs Slurm'):
        launch_batch(grid(tmp_path), tmp_path, local(tmp_path), engine='inprocess', wait=False)

@pytest.fixture
def slurm_mock():
    "submitit's mocked sbatch/sacct/scancel and an `srun` on the PATH; the shared job-state watcher cleared after."
    mock = MockedSubprocess(known_cmds=['srun'])
    yield mock
    submitit.SlurmJob.watcher.clear()

def test_slurm_array_without_a_cluster(tmp_path, capsys, slurm_mock):
    "The sbatch script as submitted, job ids, no second submission while the array runs, then a finished, a dead and a running task."
    configs = grid(tmp_path, ('ce', 'pat', 'cb'))
    runs, slurm_dir = names(configs, tmp_path), (tmp_path / 'slurm').resolve()
    with slurm_mock.context():
        ex = make_executor('slurm', tmp_path / 'slurm', partition='P', gpus_per_run=1, time_min=240, cpus_per_run=4, mem_gb=16,
                           extra=dict(account='A'))
        res = launch_batch(configs, tmp_path, ex, engine='inprocess', max_parallel=2, wait=False, report_cmd='pat-reproduce X --report-only')
    out = capsys.readouterr().out
    assert res == dict(done=[], failed={}, submitted=runs)
    sub = read(tmp_path / 'slurm' / 'submitted.json')
    (array,) = sub['arrays']
    assert array['id'] == '12' and [sub['runs'][n]['job_id'] for n in runs] == ['12_0', '12_1', '12_2']  # the mock's first job is 12
    script = Path(array['sbatch']).read_text()
    for line in ('--partition=P', '--gpus-per-node=1', '--time=240', '--array=0-2%2', '--cpus-per-task=4', '--mem=16G', '--account=A',
                 f'--output={slurm_dir}/%A_%a/%A_%a_0_log.out', f'--error={slurm_dir}/%A_%a/%A_%a_0_log.err'):
        assert f'#SBATCH {line}' in script.splitlines(), line
    assert script == sbatch_script(ex, 3, max_parallel=2)  # the preview is exactly what sbatch received
    assert 'job array 12 (at most 2 at once)' in out and 'squeue -j 12' in out and 'pat-reproduce X --report-only' in out

    with slurm_mock.context():  # the array is RUNNING (sacct): nothing is submitted again
        again = launch_batch(configs, tmp_path, ex, engine='inprocess', max_parallel=2, wait=False)
    assert again['submitted'] == [] and slurm_mock.job_count == 13
    assert '3 still queued or running in an earlier job, 0 to submit' in capsys.readouterr().out

    # task 0 runs as on a node: the command of the sbatch script, with Slurm's variables
    sub_args = submitit.SlurmJob(slurm_dir / '%j', '12_1').submission().args  # what task 1 will run: its config, engine, name
    assert (sub_args[0]['threads'], sub_args[1:]) == (4, ('inprocess', runs[1]))  # torch threads = --cpus-per-task
    env = {**os.environ, 'SUBMITIT_EXECUTOR': 'slurm', 'SLURM_JOB_ID': '20', 'SLURM_ARRAY_JOB_ID': '12', 'SLURM_ARRAY_TASK_ID': '0',
           'SLURM_CONF': '/nonexistent/slurm.conf',  # no real cluster's job 12_0 renamed by this task's scontrol
           'SLURM_PROCID': '0', 'SLURM_LOCALID': '0', 'SLURM_NODEID': '0', 'SLURM_NTASKS': '1', 'SLURM_JOB_NUM_NODES': '1'}
    subprocess.run([sys.executable, '-u', '-m', 'submitit.core._submit', str(slurm_dir / '%j')], env=env, check=True, capture_output=True)
    assert run_finished(configs[0]['out'])
    # task 1 is killed for memory (no result, a line in its log), task 2 still runs
    oom = 'slurmstepd: error: Detected 1 oom-kill event(s) in StepId=12_1.batch.'
    (slurm_dir / '12_1').mkdir(exist_ok=True); (slurm_dir / '12_1' / '12_1_0_log.err').write_text(f'starting\n{oom}\n')
    slurm_mock.job_sacct['12'] = 'JobID|State\n12_0|COMPLETED\n12_1|OUT_OF_MEMORY\n12_2|RUNNING'
    with slurm_mock.context():
        status = launch_status(tmp_path)
    assert status['done'] == runs[:1] and status['running'] == {runs[2]: 'RUNNING'}
    assert status['failed'] == {runs[1]: f"the job ended without a result (state OUT_OF_MEMORY): {oom} (log: {slurm_dir}/12_1/12_1_0_log.err)"}
    assert read(tmp_path / 'runs' / 'failures.json') == status['failed']

def test_options(tmp_path):
    argv = ['--preset', 'paper', '--root', 'nyuv2=/data/nyu', '--launcher', 'slurm', '--slurm-partition', 'gpu', '--slurm-gpus-per-run', '1',
            '--slurm-time=240', '--slurm-max-parallel', '16', '--slurm-extra', 'qos=high', '--detach', '--dry-run']
    p = argparse.ArgumentParser(); p.add_argument('--preset'); p.add_argument('--root', action='append'); p.add_argument('--dry-run', action='store_true')
    a = add_launch_args(p).parse_args(argv)
    assert report_command(argv) == 'pat-reproduce --preset paper --root nyuv2=/data/nyu --report-only'
    kw = launcher_from_args(a, tmp_path, argv)  # --dry-run: built offline, without srun
    assert (kw['wait'], kw['max_parallel']) == (False, 16)
    assert '#SBATCH --qos=high' in sbatch_script(kw['executor'], 4, kw['max_parallel']).splitlines()
    with mock.patch('shutil.which', return_value=None), pytest.raises(ValueError, match='login node'):  # no srun, no --dry-run
        launcher_from_args(add_launch_args(argparse.ArgumentParser()).parse_args(['--launcher', 'slurm']), tmp_path, [])
    with pytest.raises(ValueError, match='--detach needs --launcher slurm'):
        launcher_from_args(add_launch_args(argparse.ArgumentParser()).parse_args(['--detach']), tmp_path, [])
    assert launcher_from_args(add_launch_args(argparse.ArgumentParser()).parse_args([]), tmp_path, []) is None
    with pytest.raises(SystemExit):
        p.parse_args(['--slurm-extra', 'oops'])

class RefusingSlurm(MockedSubprocess):
    "submitit's mock, with sbatch answering as a cluster without GPUs does (and submitit's CommandFunction printing it)."
    def sbatch(self, args):
        said = 'sbatch: error: Invalid generic resource (gres) specification'
        print(said, file=sys.stderr); raise FailedJobError(said)

def test_refused_submission(tmp_path, capsys):
    "sbatch's refusal is one SubmissionRefused line with its reason, said once; nothing is recorded, its pickles are gone, its script kept."
    configs = grid(tmp_path)
    try:
        with RefusingSlurm(known_cmds=['srun']).context():
            ex = make_executor('slurm', tmp_path / 'slurm', partition='debug', gpus_per_run=1)
            with pytest.raises(SubmissionRefused) as e:
                launch_batch(configs, tmp_path, ex, engine='inprocess', wait=False)
    finally: submitit.SlurmJob.watcher.clear()
    script = tmp_path / 'slurm' / 'refused.sbatch'
    assert str(e.value) == f"sbatch refused the job array of 2 run(s): Invalid generic resource (gres) specification (script: {script})"
    assert sorted(p.name for p in (tmp_path / 'slurm').iterdir()) == ['refused.sbatch']
    assert '#SBATCH --gpus-per-node=1' in script.read_text().splitlines()
    assert 'Invalid generic resource' not in capsys.readouterr().err  # not printed by submitit on top

def test_requeued_job_is_still_running(tmp_path, slurm_mock):
    "A requeued task is running, whatever result file its killed attempt left; it is over when sacct says so."
    configs = grid(tmp_path)  # two runs: one array, tasks 12_0 and 12_1
    with slurm_mock.context():
        ex = make_executor('slurm', tmp_path / 'slurm', partition='P', gpus_per_run=0)
        launch_batch(configs, tmp_path, ex, engine='inprocess', wait=False)
        job = submitit.SlurmJob(tmp_path / 'slurm' / '%j', '12_0')
        job.paths.folder.mkdir(parents=True, exist_ok=True)
        job.paths.result_pickle.write_bytes(b'left by the first attempt')  # what a killed attempt used to leave
        for state in ('REQUEUED', 'PENDING', 'RUNNING'):
            submitit.SlurmJob.watcher.clear(); slurm_mock.set_job_state('12', state, array=2)
            assert launch_status(tmp_path)['running'] == {'synthetic3/segnet/ce': state, 'synthetic3/segnet/pat': state}
            assert launch_batch(configs, tmp_path, ex, engine='inprocess', wait=False)['submitted'] == []  # not submitted twice
        submitit.SlurmJob.watcher.clear(); slurm_mock.set_job_state('12', 'CANCELLED', array=2); job.paths.result_pickle.unlink()
        assert sorted(launch_status(tmp_path)['failed']) == ['synthetic3/segnet/ce', 'synthetic3/segnet/pat']

STOPPED_RUN = """
import os, signal, sys, time
from pat_nbdev.launch import RunJob
class Stopped(RunJob):
    stop_wait_s = float(sys.argv[1])
    def run(self, cfg, engine):
        if sys.argv[2] == 'term': os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.1)
        raise RuntimeError('DeadKernelError: Kernel died')
t0 = time.time()
try: Stopped()({'out': 'x'})
finally: print(f"took {time.time() - t0:.2f} s")
"""

@pytest.mark.parametrize('signalled', [True, False])
def test_run_failing_after_sigterm_waits_for_the_kill(signalled):
    "On Slurm, a run failing after SIGTERM (its kernel killed with the job) writes no result: it waits for the kill. Else it fails at once."
    env = {**os.environ, 'SUBMITIT_EXECUTOR': 'slurm'}
    p = subprocess.run([sys.executable, '-c', STOPPED_RUN, '2', 'term' if signalled else 'none'], env=env, capture_output=True, text=True,
                       timeout=300)
    took = float(p.stdout.split('took ')[1].split()[0])
    assert p.returncode != 0 and 'Kernel died' in p.stderr
    assert ('Slurm is stopping this job' in p.stderr) == signalled and (took >= 2) == signalled, (took, p.stderr[-2000:])

def test_wait_follows_states_submitit_deems_over(tmp_path, slurm_mock, monkeypatch):
    "A task SUSPENDED (or CONFIGURING: over, to submitit's cache) is asked about again until sacct says it has ended."
    configs = grid(tmp_path)
    with slurm_mock.context():
        ex = make_executor('slurm', tmp_path / 'slurm', partition='P', gpus_per_run=0)
        launch_batch(configs, tmp_path, ex, engine='inprocess', wait=False)
        monkeypatch.setattr(submitit.SlurmJob, 'watcher', SlurmInfoWatcher(delay_s=600))  # a later session: it knows only the tasks
        slurm_mock.set_job_state('12', 'SUSPENDED', array=2)
        threading.Timer(2, lambda: slurm_mock.set_job_state('12', 'CANCELLED', array=2)).start()
        res = {}
        waiting = threading.Thread(target=lambda: res.update(launch_batch(configs, tmp_path, ex, engine='inprocess', poll_s=0.2)), daemon=True)
        waiting.start(); waiting.join(60)
    assert not waiting.is_alive(), 'still waiting for a task sacct says was cancelled'
    assert sorted(res['failed']) == names(configs, tmp_path) and all('CANCELLED' in why for why in res['failed'].values())
