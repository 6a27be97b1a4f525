"""The training loop: resume bit for bit, determinism, outputs, bad input, and two processes under torchrun (gloo, CPU)."""
import csv, json, math, os, subprocess, sys
from pathlib import Path
import pytest
import torch
import pat_nbdev.train as T
from pat_nbdev.train import TINY_RUN, TrainConfig, train, NonFiniteLossError
from pat_nbdev.cli import main, build_parser, config_from_args
from pat_nbdev.checkpoint import RunFolderError
from pat_nbdev.data import get_dataset
from pat_nbdev.models import get_model
from pat_nbdev.metrics import ConfusionMatrix

# The project's tiny run, changed where these tests count: batches of 4 and no step caps give 4 training steps per epoch and
# 4 evaluation batches (the whole split: test_best_checkpoint_is_the_tested_one recomputes it), 3 epochs give the cosine three
# starting rates, 4 classes, and no model preset, so that test_outputs sees the CPU default ("small") filled in. PAT, whatever
# the tiny run's loss: the errors below name it.
TINY = {**TINY_RUN, "loss": "pat", "epochs": 3, "batch_size": 4, "max_steps": None, "max_eval_steps": None,
        "data_kw": {**TINY_RUN["data_kw"], "n_classes": 4}, "model_kw": {k: v for k, v in TINY_RUN["model_kw"].items() if k != "preset"}}
SCORES = ("test", "best_val", "best_epoch", "classes", "class_groups", "class_pixel_counts")
TIMING = ("train_seconds", "val_seconds", "train_img_per_s", "peak_mem_mib", "cpu_seconds")

def run(out, **kw): return train(TrainConfig(**{**TINY, **kw}, out=str(out)))

def argv(cfg:dict) -> list:
    "`pat-train` arguments for the `TrainConfig` fields `cfg` (None: the field's default)."
    flag = lambda k: "--" + k.replace("_", "-")
    args = []
    for k, v in cfg.items():
        if v is None: continue
        if isinstance(v, bool): args.append(flag(k) if v else "--no-" + flag(k)[2:])
        elif isinstance(v, dict): args += [a for kv in v.items() for a in (flag(k), "%s=%s" % kv)]
        else: args += [flag(k), str(v)]
    return args

def history(out): return list(csv.DictReader(open(Path(out)/"history.csv")))

def scores_of_history(out): return [{k: v for k, v in r.items() if k not in TIMING} for r in history(out)]

def load(out, name="last.pt"): return torch.load(Path(out)/name, weights_only=True)

def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a: assert torch.equal(a[k], b[k]), k

@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    "An uninterrupted 3-epoch run."
    out = tmp_path_factory.mktemp("ref")/"run"
    return out, run(out)

def test_outputs(reference):
    out, res = reference
    assert sorted(p.name for p in out.iterdir()) == sorted(["config.json", "last.pt", "best.pt", "metrics.json", "history.csv", "examples.npz",
                                                        "per_image.npz"])
    m = json.loads((out/"metrics.json").read_text())  # strict JSON: json.loads would accept NaN, so check the text too
    assert "NaN" not in (out/"metrics.json").read_text() and m == json.loads(json.dumps(res))
    assert {"miou", "pix_acc", "dice_err", "iou_per_class", "miou_head", "miou_body", "miou_tail"} <= set(m["test"])
    assert len(m["test"]["iou_per_class"]) == 4 and m["classes"][0] == "background"
    assert m["data"]["kind"] == "synthetic" and m["data"]["image_size"] == [32, 32] and m["data"]["images"] == dict(train=16, val=16, test=16)
    assert m["run"]["epochs"] == 3 and m["run"]["device"] == "cpu" and m["run"]["peak_memory_mib"] > 0
    cfg = json.loads((out/"config.json").read_text())
    assert cfg["amp"] is False and cfg["model_kw"] == dict(preset="small", width=4) and cfg["world_size"] == 1
    h = history(out)
    assert [int(r["epoch"]) for r in h] == [1, 2, 3]
    assert all(float(r["train_seconds"]) > 0 and float(r["peak_mem_mib"]) > 0 for r in h)

def test_cosine_schedule_over_all_steps(reference):
    out, _ = reference
    steps, epochs = 4, 3
    lrs = [float(r["lr"]) for r in history(out)]  # the rate at the start of each epoch
    expected = [1e-3 * (1 + math.cos(math.pi * e * steps / (epochs * steps))) / 2 for e in range(epochs)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert load(out)["scheduler"]["_last_lr"][0] == pytest.approx(0, abs=1e-12)  # annealed to 0 at the very last step

def test_best_checkpoint_is_the_tested_one(reference):
    "Recompute the test metrics from best.pt independently; best epoch = argmax of validation mIoU."
    out, res = reference
    best = load(out, "best.pt")
    vals = [float(r["val_miou"]) for r in history(out)]
    assert best["epoch"] == res["best_epoch"] == 1 + vals.index(max(vals))
    net = get_model(TINY["model"], 4, preset="small", **TINY["model_kw"]); net.load_state_dict(best["model"]); net.eval()
    cm = ConfusionMatrix(4)
    ds = get_dataset(TINY["dataset"], None, "test", **TINY["data_kw"])
    with torch.no_grad():
        for i in range(0, len(ds), 4):
            x, y = zip(*[ds[j] for j in range(i, i + 4)])
            cm.update(net(torch.stack(x)), torch.stack(y))
    assert cm.compute()["miou"] == pytest.approx(res["test"]["miou"], abs=1e-9)

def test_resume_is_bit_for_bit(reference, tmp_path):
    ref_out, ref = reference
    out = tmp_path/"run"
    stopped = run(out, stop_after_epochs=1)  # as if killed right after epoch 1's checkpoint
    assert stopped["stopped_at_epoch"] == 1 and load(out)["epoch"] == 1 and not (out/"metrics.json").exists()
    res = run(out)
    assert res["run"]["resumed_from_epoch"] == 1
    assert {k: res[k] for k in SCORES} == {k: ref[k] for k in SCORES}
    assert scores_of_history(out) == scores_of_history(ref_out)
    a, b = load(out), load(ref_out)
    assert_same_state(a["model"], b["model"])
    assert_same_state(load(out, "best.pt")["model"], load(ref_out, "best.pt")["model"])
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()): assert_same_state(sa, sb)

def patch_loss(monkeypatch, at:int, effect):
    "Route the `at`-th training-step loss (1-based, per run) through `effect(loss)`; other calls are untouched."
    from pat_nbdev.losses import get_loss as real
    class At(torch.nn.Module):
        def __init__(self, inner): super().__init__(); self.inner, self.calls = inner, 0
        def forward(self, logits, target):
            loss = self.inner(logits, target)
            if logits.grad_fn is not None: self.calls += 1  # training steps only (not probes on constant or leaf logits)
            return effect(loss) if self.calls == at else loss
    monkeypatch.setattr(T, "get_loss", lambda name, **kw: At(real(name, **kw)))

def nan(loss): return loss * float("nan")

def ctrl_c(loss): raise KeyboardInterrupt

def test_nonfinite_loss_stops_and_keeps_checkpoint(reference, tmp_path, monkeypatch):
    "A loss that turns NaN at epoch 2, step 2 stops the run there; the epoch-1 checkpoint survives and resumes to the same end."
    patch_loss(monkeypatch, 4 + 2, nan)
    out = tmp_path/"run"
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 2 of 4.*last good checkpoint.*epoch 1"):
        run(out)
    assert load(out)["epoch"] == 1 and len(history(out)) == 1 and not (out/"metrics.json").exists()
    monkeypatch.undo()
    res = run(out)  # killed mid-epoch 2 and restarted: same end as the uninterrupted run
    assert {k: res[k] for k in SCORES} == {k: reference[1][k] for k in SCORES}
    assert_same_state(load(out)["model"], load(reference[0])["model"])

def test_exploding_loss_stops_and_keeps_checkpoint(tmp_path, monkeypatch):
    "A finite but exploding loss (1e12 x its size) is divergence too: stopped at that step, last.pt of epoch 1 kept."
    patch_loss(monkeypatch, 4 + 2, lambda loss: loss * 1e12)
    out = tmp_path/"run"
    with pytest.raises(NonFiniteLossError, match=r"diverged at epoch 2, step 2 of 4.*last good checkpoint.*epoch 1.*--lr"):
        run(out, epochs=2)
    assert load(out)["epoch"] == 1 and len(history(out)) == 1

def test_nonfinite_weights_are_not_checkpointed(tmp_path, monkeypatch):
    "Weights that turn NaN in an epoch whose losses were all finite stop the run before that epoch's checkpoint."
    real = T.Trainer.train_epoch
    def poisoned(self, epoch):
        row = real(self, epoch)
        if epoch == 2: next(self.net.parameters()).data.fill_(float("nan"))
        return row
    monkeypatch.setattr(T.Trainer, "train_epoch", poisoned)
    out = tmp_path/"run"
    with pytest.raises(NonFiniteLossError, match=r"end of epoch 2: non-finite weights.*last good checkpoint.*epoch 1"): run(out)
    assert load(out)["epoch"] == 1 and all(torch.isfinite(v).all() for v in load(out)["model"].values())

def test_deterministic_for_a_seed(reference, tmp_path):
    ref_out, ref = reference
    again = run(tmp_path/"again")
    assert {k: again[k] for k in SCORES} == {k: ref[k] for k in SCORES}
    assert_same_state(load(tmp_path/"again")["model"], load(ref_out)["model"])
    run(tmp_path/"seed1", seed=1)  # the seed matters (so the comparison above can fail)
    assert not torch.equal(*(next(iter(load(o)["model"].values())) for o in (tmp_path/"seed1", ref_out)))

def test_refuses_another_run(reference, tmp_path, capsys):
    out = tmp_path/"run"
    run(out, epochs=1)
    with pytest.raises(RunFolderError, match="loss: 'pat' -> 'ce'"): run(out, epochs=1, loss="ce")
    assert load(out)["epoch"] == 1  # untouched
    ce = [*argv({**TINY, "loss": "ce", "epochs": 1}), "--out", str(out)]
    with pytest.raises(SystemExit) as e: main(ce)
    assert e.value.code == 2 and "--overwrite" in capsys.readouterr().err  # the folder cannot take the run: fix the command
    main(ce + ["--overwrite"])
    assert json.loads((out/"config.json").read_text())["loss"] == "ce" and (out/"metrics.json").exists()

@pytest.mark.parametrize("flag,bad", [("--model", "resnet"), ("--loss", "dice"), ("--dataset", "imagenet")])
def test_unknown_names_print_usage(flag, bad, capsys):
    with pytest.raises(SystemExit) as e: main([flag, bad])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "usage: pat-train" in err and f"invalid choice: '{bad}'" in err and "Traceback" not in err

def test_bad_hyper_parameter_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--loss", "ce", "--tau", "0.5", "--out", str(tmp_path/"x"), "--size", "32", "--data-kw", "n_images=4", "--epochs", "1"])
    assert e.value.code == 2 and "tau" in capsys.readouterr().err

def test_cli_maps_flags_to_config():
    a = build_parser().parse_args("--loss pat --tau 0.5 --alpha 3 --normalize mask --variant original --detach-beta "
                                    "--loss-kw extra=[1,2] --preset small --model-kw width=8 --size 64x32 --n-classes 3 --no-amp".split())
    cfg = config_from_args(a)
    assert cfg.loss_kw == dict(tau=0.5, alpha=3.0, normalize="mask", variant="original", detach_beta=True, extra=[1, 2])
    assert cfg.model_kw == dict(preset="small", width=8) and cfg.data_kw == dict(size=(64, 32), n_classes=3) and cfg.amp is False

def test_torchrun_two_processes_gloo(tmp_path):
    out = tmp_path/"ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "pat_nbdev.cli",
           *argv({**TINY, "epochs": 2}), "--device", "cpu", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)  # ~20 s idle; minutes on a busy machine
    assert p.returncode == 0, p.stderr[-3000:]
    m = json.loads((out/"metrics.json").read_text())
    assert m["run"]["world_size"] == 2 and m["data"]["train_steps_per_epoch"] == 4  # 16 images / (2 processes x 2 per batch)
    assert len(history(out)) == 2 and math.isfinite(m["test"]["miou"])
    assert p.stdout.count("test mIoU") == 1  # only rank 0 reports
    assert not list(out.glob(".*.tmp"))

# -- user-facing errors of `pat-train`: one line on stderr, no traceback, a non-zero exit status --------------------------
def cli(out, *extra):
    "`pat-train` arguments giving the config of `run(out)` (with 2 epochs)."
    return [*argv({**TINY, "epochs": 2}), "--out", str(out), *extra]

def fails(argv, capsys, code=1) -> str:
    "Run `main(argv)`: it must exit with `code` and one line on stderr, no traceback; that line."
    try: main(argv)
    except SystemExit as e: status = e.code
    except KeyboardInterrupt: pytest.fail("KeyboardInterrupt escaped main")
    else: pytest.fail("main returned")
    err = capsys.readouterr().err.strip()
    assert status == code and len(err.splitlines()) == 1 and "Traceback" not in err and "usage:" not in err, (status, err)
    return err

def test_resume_with_paths_written_differently(tmp_path, monkeypatch):
    "`--out run/ --root nyu/` and the same folders written absolute are the same run: it resumes."
    from pat_nbdev.data import write_nyuv2_like
    monkeypatch.chdir(tmp_path)
    write_nyuv2_like(tmp_path/"nyu", n={"train": 16, "val": 4}, size=(32, 32))
    kw = {**TINY, "dataset": "nyuv2", "data_kw": dict(size=32), "epochs": 2}
    train(TrainConfig(**kw, root="nyu/", out="run/", stop_after_epochs=1))
    assert json.loads((tmp_path/"run"/"config.json").read_text())["root"] == str((tmp_path/"nyu").resolve())
    res = train(TrainConfig(**kw, root=str(tmp_path/"nyu"), out=str(tmp_path/"run")))
    assert res["run"]["resumed_from_epoch"] == 1

def test_overwrite_keeps_the_old_run_until_the_first_checkpoint(tmp_path, monkeypatch):
    out = tmp_path/"run"
    run(out, epochs=1)
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    patch_loss(monkeypatch, 2, nan)  # the replacing run fails in epoch 1: the old run must come back, byte for byte
    with pytest.raises(NonFiniteLossError): run(out, epochs=1, loss="ce", overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old
    patch_loss(monkeypatch, 4 + 2, nan)  # fails in epoch 2, after its first checkpoint: the old run is gone for good
    with pytest.raises(NonFiniteLossError): run(out, epochs=2, loss="ce", overwrite=True)
    assert json.loads((out/"config.json").read_text())["loss"] == "ce" and load(out)["epoch"] == 1
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "config.json", "history.csv", "last.pt"]  # no .replaced-* left

def test_lr_1e9_diverges_with_one_line(tmp_path):
    "The real `pat-train` command: exit status 1, one line naming epoch, step and --lr; no folder left behind."
    out = tmp_path/"run"
    p = subprocess.run([str(Path(sys.executable).parent/"pat-train"), *cli(out, "--lr", "1e9")], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    err = p.stderr.strip()
    assert p.returncode == 1 and len(err.splitlines()) == 1 and "Traceback" not in err, (p.returncode, err)
    assert "diverged at epoch 1, step" in err and "--lr" in err and not out.exists()

def test_nonfinite_logits_one_line(tmp_path, monkeypatch, capsys):
    real = T.get_model
    class NaNAt2(torch.nn.Module):
        def __init__(self, inner): super().__init__(); self.inner, self.calls = inner, 0
        def forward(self, x):
            self.calls += self.training
            return self.inner(x) * (float("nan") if self.calls == 2 and self.training else 1)
    monkeypatch.setattr(T, "get_model", lambda *a, **kw: NaNAt2(real(*a, **kw)))
    err = fails(cli(tmp_path/"run"), capsys)
    assert "non-finite logits" in err and "epoch 1, step 2" in err and not (tmp_path/"run").exists()

@pytest.mark.parametrize("layout", ["missing", "incomplete"])
def test_bad_root_one_line(tmp_path, capsys, layout):
    root = tmp_path/"camvid" if layout == "incomplete" else Path("/nonexistent")
    if layout == "incomplete": (root/"train").mkdir(parents=True)
    err = fails(["--dataset", "camvid", "--root", str(root), "--out", str(tmp_path/"run")], capsys, code=2)
    assert f"--root {root}" in err and "camvid" in err and "pat-data check" in err and not (tmp_path/"run").exists()

def test_out_is_a_file(tmp_path, capsys):
    f = tmp_path/"notes.txt"; f.write_text("mine")
    err = fails(cli(f), capsys, code=2)
    assert str(f) in err and "is a file" in err and f.read_text() == "mine"

@pytest.mark.parametrize("where", ["proc", "read-only folder"])
def test_unwritable_out(tmp_path, capsys, where):
    if where == "proc": out = Path("/proc/pat-train-test/run")
    else:
        if os.geteuid() == 0: pytest.skip("root writes into a 0o500 folder")
        (tmp_path/"ro").mkdir(); (tmp_path/"ro").chmod(0o500); out = tmp_path/"ro"/"run"
    err = fails(cli(out), capsys, code=2)
    assert str(out) in err and "cannot write" in err and not out.exists()

def test_corrupt_checkpoint_one_line(tmp_path, capsys):
    out = tmp_path/"run"
    main(cli(out, "--stop-after-epochs", "1"))
    (out/"last.pt").write_bytes(b"not a checkpoint " * 8)
    err = fails(cli(out), capsys, code=2)
    assert str(out/"last.pt") in err and "--overwrite" in err
    main(cli(out, "--overwrite"))
    assert (out/"metrics.json").exists() and load(out)["epoch"] == 2

def test_corrupt_config_one_line(tmp_path, capsys):
    out = tmp_path/"run"; out.mkdir()
    (out/"config.json").write_text('{\n  "dataset": "synth')  # truncated
    err = fails(cli(out), capsys, code=2)
    assert str(out/"config.json") in err and "--overwrite" in err

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_cuda_without_gpu_one_line(tmp_path, capsys):
    err = fails(cli(tmp_path/"run", "--device", "cuda"), capsys, code=2)
    assert "no CUDA device" in err and "--device cpu" in err and not (tmp_path/"run").exists()

def test_unknown_data_kw_one_line(tmp_path, capsys):
    err = fails(cli(tmp_path/"run", "--data-kw", "colour=red"), capsys, code=2)
    assert "colour" in err and all(k in err for k in ("n_classes", "size", "seed", "n_images"))

def test_ctrl_c_one_line_and_resume(tmp_path, monkeypatch, capsys):
    out = tmp_path/"run"
    patch_loss(monkeypatch, 4 + 2, ctrl_c)  # Ctrl-C in epoch 2
    err = fails(cli(out), capsys, code=130)
    assert "run the same command again" in err and load(out)["epoch"] == 1
    monkeypatch.undo()
    main(cli(out))
    assert json.loads((out/"metrics.json").read_text())["run"]["resumed_from_epoch"] == 1

def test_failed_start_leaves_no_folder(tmp_path, monkeypatch, capsys):
    "A run that fails before its first checkpoint removes the folders it made, and only what it wrote into an existing one."
    patch_loss(monkeypatch, 2, ctrl_c)
    fails(cli(tmp_path/"a"/"b"/"run"), capsys, code=130)
    assert not (tmp_path/"a").exists()
    keep = tmp_path/"keep"; keep.mkdir(); (keep/"run.log").write_text("log")
    with pytest.raises(NonFiniteLossError):
        patch_loss(monkeypatch, 2, nan); run(keep, epochs=1)
    assert [p.name for p in keep.iterdir()] == ["run.log"]
