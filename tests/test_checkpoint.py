"""The run folder's guard: paths compared resolved, safe replacement, damaged files named, nothing left by a failed start."""
import json, os
from pathlib import Path
import pytest
import torch
from pat_nbdev.checkpoint import (RunFolder, RunFolderError, check_run_folder, load_checkpoint, atomic_save, write_json,
                                  resolve_path, divergence)

CFG = dict(model="segnet", epochs=2)

def names(folder): return sorted(p.name for p in Path(folder).iterdir())

def test_config_with_relative_root_matches_resolved(tmp_path, monkeypatch):
    "A config.json written before roots were resolved ('data/x/') still matches the same folder given absolute."
    monkeypatch.chdir(tmp_path)
    (tmp_path/"run").mkdir()
    write_json({**CFG, "root": "data/x/"}, tmp_path/"run"/"config.json"); atomic_save({}, tmp_path/"run"/"last.pt")
    assert check_run_folder("run/", {**CFG, "root": resolve_path(tmp_path/"data"/"x")}, paths=["root"]) is True
    with pytest.raises(RunFolderError, match="root"): check_run_folder("run", {**CFG, "root": str(tmp_path/"other")}, paths=["root"])

def test_abandon_without_open_touches_nothing(tmp_path):
    write_json(CFG, tmp_path/"config.json"); atomic_save({}, tmp_path/"last.pt")
    f = RunFolder(tmp_path, {**CFG, "epochs": 3}, overwrite=True)
    f.check(); f.abandon()
    assert names(tmp_path) == ["config.json", "last.pt"]

def test_resumed_run_that_fails_keeps_everything(tmp_path):
    write_json(CFG, tmp_path/"config.json"); atomic_save({"epoch": 1}, tmp_path/"last.pt")
    with pytest.raises(KeyboardInterrupt):
        with RunFolder(tmp_path, CFG) as f:
            assert f.check() is True
            f.open(); raise KeyboardInterrupt
    assert names(tmp_path) == ["config.json", "last.pt"] and torch.load(tmp_path/"last.pt") == {"epoch": 1}

def test_failure_after_commit_keeps_the_new_run(tmp_path):
    out = tmp_path/"new"
    with pytest.raises(RuntimeError):
        with RunFolder(out, CFG) as f:
            f.check(); f.open(); atomic_save({"epoch": 1}, out/"last.pt"); f.commit(); raise RuntimeError("later")
    assert names(out) == ["config.json", "last.pt"]

def test_overwrite_of_a_damaged_config_sets_it_aside(tmp_path):
    (tmp_path/"config.json").write_text('{"model": "seg')  # truncated
    with pytest.raises(RunFolderError, match="config.json is not a run config"): RunFolder(tmp_path, CFG).check()
    with RunFolder(tmp_path, CFG, overwrite=True) as f:
        f.check(); f.open()
        assert json.loads((tmp_path/"config.json").read_text()) == CFG and len(list(tmp_path.glob(".replaced-*"))) == 1
        f.commit()
    assert names(tmp_path) == ["config.json"]

@pytest.mark.skipif(not os.path.ismount("/proc"), reason="needs /proc")
def test_unwritable_folder_is_refused_before_anything_is_made():
    with pytest.raises(RunFolderError, match=r"--out /proc/pat/run: cannot write in /proc"): RunFolder("/proc/pat/run", CFG).check()

def test_truncated_checkpoint_is_named(tmp_path):
    atomic_save({"epoch": 1, "model": {"w": torch.zeros(1000)}}, tmp_path/"last.pt")
    data = (tmp_path/"last.pt").read_bytes(); (tmp_path/"last.pt").write_bytes(data[:len(data) // 2])
    with pytest.raises(RunFolderError, match=r"last.pt is not a readable checkpoint .*--overwrite"): load_checkpoint(tmp_path/"last.pt")

@pytest.mark.parametrize("loss,uniform", [(3.0, 2.0), (1e3, 2.0), (5e8, 2.7e8), (900.0, 0.0)])
def test_healthy_losses_are_not_divergence(loss, uniform): assert divergence(loss, uniform) is None
