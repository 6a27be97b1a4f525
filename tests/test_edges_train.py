"""The second round of `pat-train` edges (issue 14): one run per folder at a time, honest epoch sizes, a full disk, stale
temporary files, and one-line errors for a loss that returns no scalar and for `--seed -1`."""
import errno, io, json, os, signal, subprocess, sys, time
from pathlib import Path
import pytest
import torch
import pat_nbdev.train as T
import pat_nbdev.checkpoint as C
from pat_nbdev.checkpoint import FolderLock
from pat_nbdev.cli import main
from test_train import TINY, cli, fails, load, run

PAT_TRAIN = str(Path(sys.executable).parent/"pat-train")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}

def wait_for(path, proc, timeout=600):  # generous: CI machines may be busy
    "Wait until `path` exists (while `proc` runs)."
    end = time.monotonic() + timeout
    while not Path(path).exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < end, f"{path} did not appear"
        time.sleep(0.05)

def names(folder): return sorted(p.name for p in Path(folder).iterdir())

# -- 1. one run per folder at a time ---------------------------------------------------------------------------------------
def test_second_run_into_a_busy_folder_is_refused(tmp_path, capsys):
    "A folder locked by another live process: `pat-train` refuses in one line naming the folder and that process; nothing written."
    out = tmp_path/"run"
    holder = subprocess.Popen([sys.executable, "-c", f"from pat_nbdev.checkpoint import FolderLock; import time; "
                               f"lock = FolderLock({str(out)!r}, 'a training run').acquire(); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        err = fails(cli(out), capsys, code=2)
        assert f"{out} is in use by a training run (pid {holder.pid} on " in err and "wait for it to end" in err, err
        assert names(out) == [C.LOCK_FILE]
    finally: holder.kill(); holder.wait()
    assert (out/C.LOCK_FILE).exists()  # a dead holder leaves its file, but no lock: the run goes ahead
    T.train(T.TrainConfig(**{**TINY, "epochs": 1}, out=str(out)))
    assert names(out) == ["best.pt", "config.json", "examples.npz", "history.csv", "last.pt", "metrics.json", "per_image.npz"]

def test_lock_taken_after_the_check_is_still_honoured(tmp_path, monkeypatch):
    "Another run takes the folder after this one's early check (while it builds its data): this one refuses at `open`."
    out, locks = tmp_path/"run", []
    real = T.Trainer._build_data
    def build_then_lose_the_race(self):
        real(self); locks.append(FolderLock(out, "the faster run").acquire())
    monkeypatch.setattr(T.Trainer, "_build_data", build_then_lose_the_race)
    with pytest.raises(C.FolderLockedError, match="in use by the faster run"): run(out, epochs=1)
    assert names(out) == [C.LOCK_FILE]
    locks[0].release()

def test_two_pat_train_at_once(tmp_path):
    "The real race: a second command started while the first trains exits 2 in one line and touches nothing of the first's."
    out = tmp_path/"run"
    first = subprocess.Popen([PAT_TRAIN, *cli(out, "--epochs", "1000")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=ENV, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # Ctrl-C-able from a background job
    try:
        wait_for(out/"last.pt", first)
        second = subprocess.run([PAT_TRAIN, *cli(out, "--loss", "ce", "--overwrite")], capture_output=True, text=True, env=ENV, timeout=900)
        err = second.stderr.strip()
        assert second.returncode == 2 and len(err.splitlines()) == 1 and f"{out} is in use by a training run (pid {first.pid} " in err, err
        assert first.poll() is None, "the first run ended before the second was refused: make it longer"
        first.send_signal(signal.SIGINT)  # Ctrl-C: exit 130, its folder its own and resumable
        assert first.wait(timeout=300) == 130 and "run the same command again to resume" in first.communicate()[1]
    finally:
        if first.poll() is None: first.kill(); first.wait()
    assert json.loads((out/"config.json").read_text())["loss"] == "pat" and load(out)["epoch"] >= 1
    assert names(out) == ["best.pt", "config.json", "history.csv", "last.pt"]

def test_sigkill_leaves_no_false_lock_and_stale_temps_go(tmp_path):
    "`kill -9` mid-run (and a checkpoint write it cut short): the same command resumes, and the dead write's temp files go."
    out = tmp_path/"run"
    p = subprocess.Popen([PAT_TRAIN, *cli(out, "--epochs", "5")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    try: wait_for(out/"last.pt", p)
    finally: p.kill(); p.wait()  # SIGKILL
    assert not (out/"metrics.json").exists(), "the run ended before it was killed"
    (out/".last.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint"); (out/".best.pt.x.tmp").write_bytes(b"half")
    (out/"my notes.tmp").write_text("mine")  # not a run file's temp: kept
    epoch = load(out)["epoch"]
    done = subprocess.run([PAT_TRAIN, *cli(out, "--epochs", "5")], capture_output=True, text=True, env=ENV, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((out/"metrics.json").read_text())["run"]["resumed_from_epoch"] == epoch
    assert names(out) == ["best.pt", "config.json", "examples.npz", "history.csv", "last.pt", "metrics.json", "my notes.tmp",
                          "per_image.npz"]

# -- 5. what an epoch really trains ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size,max_steps,steps,images", [(100000, None, 1, 16), (5, None, 3, 15), (4, 2, 2, 8)])
def test_recorded_epoch_size_is_what_was_trained(tmp_path, batch_size, max_steps, steps, images):
    res = run(tmp_path/"run", epochs=1, batch_size=batch_size, max_steps=max_steps)
    assert (res["data"]["train_steps_per_epoch"], res["data"]["train_images_per_epoch"]) == (steps, images)

# -- 6. a full disk --------------------------------------------------------------------------------------------------------
class FullDisk(io.RawIOBase):
    "A file on a full disk: every write fails with ENOSPC."
    def writable(self): return True
    def write(self, b): raise OSError(errno.ENOSPC, "No space left on device")

def on_full_disk(monkeypatch, name, epoch=None):
    "Make writing `name` (of `epoch`, for checkpoints) fail as on a full disk; torch's own error for checkpoints."
    real_save, real_json = T.atomic_save, T.write_json
    def save(obj, path):
        if Path(path).name != name or obj.get("epoch") != epoch: return real_save(obj, path)
        return C.atomic_write(path, lambda f: (f.write(b"PK\x03\x04 a start"), torch.save(obj, io.BufferedWriter(FullDisk(), 64))))
    def write_json(obj, path):
        if Path(path).name != name: return real_json(obj, path)
        return C.atomic_write(path, lambda f: FullDisk().write(b"{"))
    monkeypatch.setattr(T, "atomic_save", save); monkeypatch.setattr(T, "write_json", write_json)

@pytest.mark.parametrize("name,epoch,kept", [("last.pt", 2, 1), ("metrics.json", None, 2)])
def test_full_disk_is_one_line_and_resumes(tmp_path, monkeypatch, capsys, name, epoch, kept):
    out = tmp_path/"run"
    on_full_disk(monkeypatch, name, epoch)
    err = fails(cli(out), capsys, code=1)
    assert f"no space left on device: {out} (writing {name})" in err and f"(epoch {kept}), is kept" in err, err
    assert "inline_container" not in err and load(out)["epoch"] == kept and not list(out.glob(".*.tmp"))
    monkeypatch.undo()
    main(cli(out))
    m = json.loads((out/"metrics.json").read_text())
    assert m["run"]["epochs"] == 2 and m["run"]["resumed_from_epoch"] == kept

def test_full_disk_in_the_first_epoch_leaves_no_folder(tmp_path, monkeypatch, capsys):
    on_full_disk(monkeypatch, "last.pt", 1)
    err = fails(cli(tmp_path/"run"), capsys, code=1)
    assert "no space left on device" in err and "no checkpoint was written" in err and not (tmp_path/"run").exists()

def test_full_disk_under_the_batch_leaves_no_half_notebook(tmp_path, monkeypatch, capsys):
    "Under `pat-reproduce` the run finishes but papermill's last write of `train_run.ipynb` fails: one line, no half notebook kept."
    import pat_nbdev.experiments as E
    from pat_nbdev.batch import run_batch
    out = tmp_path/"runs"/"r"; cfg = {**TINY, "epochs": 1, "out": str(out)}
    def execute_notebook(nb, out_nb, parameters, cwd=None, kernel=None):  # the kernel trains, then the disk fills as the notebook is written
        T.train(T.TrainConfig(**parameters["config"]))
        out_nb.write_text('{"cells": [{"cell_type": "code", "sou')
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(E, "execute_notebook", execute_notebook)
    res = run_batch([cfg], tmp_path/"runs")
    assert res["failed"] == {"r": f"DiskFullError: no space left on device: {out} (writing train_run.ipynb)"}, res
    assert E.run_finished(out) and not (out/"train_run.ipynb").exists()
    (out/"train_run.ipynb").write_text('{"cells": [')  # what an earlier version kept: removed when the batch meets the run again
    assert run_batch([cfg], tmp_path/"runs") == dict(done=["r"], failed={})
    assert not (out/"train_run.ipynb").exists() and "removed the truncated train_run.ipynb of 1 finished run(s)" in capsys.readouterr().out

# -- 10. one line where a traceback was -------------------------------------------------------------------------------------
LOSSES = '''import torch.nn as nn, torch.nn.functional as F
class PerPixel(nn.Module):
    def __init__(self, ignore_index=255): super().__init__()
    def forward(self, logits, target): return F.cross_entropy(logits, target, reduction="none")
class Number(nn.Module):
    def __init__(self, ignore_index=255): super().__init__()
    def forward(self, logits, target): return F.cross_entropy(logits, target).item()
class Detached(nn.Module):
    def __init__(self, ignore_index=255): super().__init__()
    def forward(self, logits, target): return F.cross_entropy(logits, target).detach()
'''

@pytest.mark.parametrize("cls,why", [("PerPixel", "returned shape [1, 2, 2]"), ("Number", "returned a float"),
                                     ("Detached", "returned no gradient")])
def test_loss_without_a_scalar_is_one_line(tmp_path, monkeypatch, capsys, cls, why):
    (tmp_path/"edgelosses.py").write_text(LOSSES); monkeypatch.syspath_prepend(str(tmp_path))
    err = fails(cli(tmp_path/"run", "--loss", f"edgelosses:{cls}"), capsys, code=2)
    assert f"--loss edgelosses:{cls} {why}" in err and "expected a scalar tensor" in err and not (tmp_path/"run").exists(), err

@pytest.mark.parametrize("seed", ["-1", str(2**64)])
def test_seed_out_of_range_names_seed(tmp_path, capsys, seed):
    err = fails(cli(tmp_path/"run", "--seed", seed), capsys, code=2)
    assert "--seed must be a whole number from 0" in err and seed in err
