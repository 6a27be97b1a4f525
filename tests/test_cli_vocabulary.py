"""One vocabulary for the four commands: the README's option and exit-code tables match the `--help` of pat-train, pat-data,
pat-bench and pat-reproduce; a bad value exits 2 with one line naming the option in each; the previous release's spellings
still work, with a one-line notice."""
import io, re
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
import pytest
import torch
from pat_nbdev import bench, cli, datacli, reproduce
from pat_nbdev.argtypes import VOCABULARY, exit_codes_markdown, key_value, vocabulary_markdown
from pat_nbdev.data import write_nyuv2_like
from pat_nbdev.device import resolve_device
from pat_nbdev.launch import launcher_from_args

REPO = Path(__file__).resolve().parents[1]
MAINS = {"pat-train": cli.main, "pat-data": datacli.main, "pat-bench": bench.main, "pat-reproduce": reproduce.main}
COMMANDS = ("pat-train", "pat-data check", "pat-data download", "pat-data stats", "pat-bench losses", "pat-bench training", "pat-reproduce")
NOTICE = "{prog}: {old} is deprecated, use {new} (the old spelling goes in the next release)"

def call(command:str, *argv) -> tuple:
    "(exit status, stdout, stderr) of `command argv`, run in this process as its console script runs it."
    prog, *sub = command.split()
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try: code = MAINS[prog]([*sub, *argv])
        except SystemExit as e: code = e.code
    return code or 0, out.getvalue(), err.getvalue()

def option_helps(text:str) -> dict:
    "{option string: its help, on one line} from an argparse --help text printed without wrapping."
    found, names = {}, []
    for line in text.splitlines():
        if line.startswith("  -"):
            invocation, _, help = line.strip().partition("  ")
            names = [part.split()[0] for part in invocation.split(", ")]
            found.update({n: help.strip() for n in names})
        elif line.startswith("   ") and names: found.update({n: f"{found[n]} {line.strip()}".strip() for n in names})
        else: names = []
    return found

def words(s:str) -> str: return " ".join(s.split())

def readme_table(header:str) -> list:
    "The rows (lists of cells) of the README table under the line `header`."
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    rows = []
    for line in lines[lines.index(header) + 2:]:
        if not line.startswith("|"): break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows

def commands_of(cell:str) -> list:
    "'pat-train, pat-data check/stats' -> ['pat-train', 'pat-data check', 'pat-data stats']."
    out = []
    for c in cell.split(", "):
        prog, *sub = c.split()
        out += [f"{prog} {s}" for s in sub[0].split("/")] if sub else [prog]
    return out

OPTION_ROWS = readme_table("| option | value | commands | meaning |")
EXIT_ROWS = readme_table("| exit status | meaning |")

@pytest.fixture(scope="module")
def helps() -> dict:
    "{command: (its whole --help, {option: help})}, printed wide enough that argparse wraps nothing."
    mp = pytest.MonkeyPatch(); mp.setenv("COLUMNS", "3000")
    try:
        res = {}
        for c in COMMANDS:
            code, out, err = call(c, "--help")
            assert code == 0 and not err, (c, code, err)
            res[c] = (out, option_helps(out))
        return res
    finally: mp.undo()

# ------------------------------------------------------------------ the README's tables against --help

def test_readme_shows_the_one_table():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert vocabulary_markdown() in text and exit_codes_markdown() in text  # README from nbs/index.ipynb, tables from argtypes
    assert [r[0].strip("`") for r in OPTION_ROWS] == list(VOCABULARY) and len(EXIT_ROWS) >= 5

def test_option_parser_reads_argparse_help():  # the helper the next test relies on
    text = "options:\n  -h, --help  show\n  --amp, --no-amp   mixed precision\n  --model-size {a,b}\n      the model's\n      size\n\nexit\n"
    assert option_helps(text) == {"-h": "show", "--help": "show", "--amp": "mixed precision", "--no-amp": "mixed precision",
                                  "--model-size": "the model's size"}

@pytest.mark.parametrize("option,value,commands,meaning", OPTION_ROWS, ids=[r[0].strip("`") for r in OPTION_ROWS])
def test_readme_options_match_help(helps, option, value, commands, meaning):
    option, listed = option.strip("`"), commands_of(commands)
    assert set(listed) <= set(COMMANDS), listed
    for c in COMMANDS:
        found = helps[c][1]
        if c in listed:
            assert option in found, f"{c} --help has no {option}"
            assert words(meaning) in words(found[option]), f"{c} {option}: {found[option]!r} does not say {meaning!r}"
        else: assert option not in found, f"{c} has {option}, which the README's table does not list for it"

@pytest.mark.parametrize("command", COMMANDS)
def test_help_states_the_exit_codes(helps, command):
    text = words(helps[command][0])
    for code, meaning in EXIT_ROWS: assert f"{code} {words(meaning)}" in text, (command, code)

# ------------------------------------------------------------------ bad input: exit 2, one line naming the option

BAD = [("pat-train", ["--epochs", "0"], "--epochs"), ("pat-train", ["--model-size", "huge"], "--model-size"),
       ("pat-train", ["--size", "0x4"], "--size"), ("pat-train", ["--loss-kw", "tau"], "--loss-kw"),
       ("pat-train", ["--seed", "-1"], "--seed"),
       ("pat-data stats", ["synthetic", "--n-classes", "0"], "--n-classes"),
       ("pat-data check", ["camvid", "--root", "/nonexistent/camvid"], "--root"),
       ("pat-bench losses", ["--repeats", "0"], "--repeats"), ("pat-bench training", ["--size", "big"], "--size"),
       ("pat-bench losses", ["--device", "tpu"], "--device"),
       ("pat-reproduce", ["--root", "/data/camvid"], "--root"), ("pat-reproduce", ["--jobs", "0"], "--jobs"),
       ("pat-reproduce", ["--devices", "x"], "--devices"), ("pat-reproduce", ["--slurm-gpus-per-run", "-1"], "--slurm-gpus-per-run"),
       ("pat-reproduce", ["--slurm-cpus-per-run", "0"], "--slurm-cpus-per-run"),
       ("pat-reproduce", ["--slurm-extra", "qos"], "--slurm-extra"), ("pat-reproduce", ["--slurm-time", "1.5"], "--slurm-time")]

@pytest.mark.parametrize("command,argv,option", BAD, ids=[f"{c}{' '.join(['', *a])}" for c, a, _ in BAD])
def test_bad_input_exits_2_with_one_line(command, argv, option, tmp_path):
    code, out, err = call(command, *argv, *([] if command.startswith("pat-data") else ["--out", str(tmp_path / "out")]))
    errors = [l for l in err.splitlines() if "error:" in l]
    assert code == 2 and "Traceback" not in err, (code, err)
    assert len(errors) == 1 and errors[0] == err.splitlines()[-1], err  # the usage, then one line
    assert errors[0].startswith(command.split()[0]) and option in errors[0], errors[0]
    assert not (tmp_path / "out").exists()  # nothing was started

@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_bench_device_is_resolve_devices(tmp_path):
    "pat-bench reads --device as pat-train does, with `resolve_device`, and says what it says."
    with pytest.raises(ValueError) as e: resolve_device("cuda")
    code, out, err = call("pat-bench", "losses", "--device", "cuda", "--out", str(tmp_path))
    assert code == 2 and err.splitlines()[-1] == f"pat-bench losses: error: {e.value}"

def test_one_key_value_parser():
    "pat-train's --*-kw and pat-reproduce's --slurm-extra read KEY=VALUE with the one parser of argtypes."
    types = {a.dest: a.type for p in (cli.build_parser(), reproduce.reproduce_parser()) for a in p._actions if a.metavar == "KEY=VALUE"}
    assert types == dict(loss_kw=key_value, model_kw=key_value, data_kw=key_value, slurm_extra=key_value)

# ------------------------------------------------------------------ the previous release's spellings

def test_pat_train_preset_is_model_size(capsys):
    a = cli.build_parser().parse_args(["--preset", "small"])
    assert cli.config_from_args(a).model_kw == dict(preset="small")
    assert capsys.readouterr().err.splitlines() == [NOTICE.format(prog="pat-train", old="--preset", new="--model-size")]
    a = cli.build_parser().parse_args(["--model-size", "small"])
    assert cli.config_from_args(a).model_kw == dict(preset="small") and capsys.readouterr().err == ""

def test_pat_reproduce_slurm_max_parallel_is_jobs(tmp_path, capsys):
    a = reproduce.reproduce_parser().parse_args(["--launcher", "local", "--slurm-max-parallel", "4"])
    assert a.jobs == 4 and launcher_from_args(a, tmp_path, [])["max_parallel"] == 4
    assert capsys.readouterr().err.splitlines() == [NOTICE.format(prog="pat-reproduce", old="--slurm-max-parallel", new="--jobs")]
    a = reproduce.reproduce_parser().parse_args(["--launcher", "local", "--jobs", "4"])
    assert launcher_from_args(a, tmp_path, [])["max_parallel"] == 4 and capsys.readouterr().err == ""
    assert "--slurm-max-parallel" not in reproduce.reproduce_parser().format_help()

def test_pat_data_positional_root(tmp_path):
    root = write_nyuv2_like(tmp_path / "nyuv2", {"train": 2, "val": 2}, size=(16, 16))
    old, new = call("pat-data check", "nyuv2", str(root), "--quick"), call("pat-data check", "nyuv2", "--root", str(root), "--quick")
    assert old[:2] == new[:2] == (0, new[1]) and "OK: nyuv2" in new[1] and new[2] == ""
    assert old[2].splitlines() == [NOTICE.format(prog="pat-data", old="a positional ROOT", new=f"--root {root}")]
    code, _, err = call("pat-data check", "nyuv2", str(root), "--root", str(root))
    assert code == 2 and err.splitlines()[-1].startswith("pat-data check: error: two dataset folders")
