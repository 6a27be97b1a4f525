"""Execute library notebooks in place, keeping their outputs (figures, tables) for readers; cells flagged in
settings.ini's `tst_flags` (slow, gpu) are skipped, as under `nbdev_test`; cells marked `#| output: false` run but keep
no output. Then run `nbdev_clean`.

Usage: .venv/bin/python scripts/run_notebooks.py [--flags slow] nbs/00_data.ipynb [...]
(`--flags slow` also runs the cells flagged slow, so that their figures are stored too.)"""
import argparse, os
from pathlib import Path
from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell
from nbdev.config import get_config
from nbdev.process import NBProcessor

def main(paths, force=()):
    skip = set(get_config().tst_flags.split()) - set(force)
    os.environ.setdefault("MPLBACKEND", "Agg")
    for p in map(Path, paths):
        nb = NBProcessor(p, process=True).nb  # parses the `#|` directives into cell.directives_
        def no_eval(cell):
            if cell.cell_type != "code": return True
            d = getattr(cell, "directives_", {}) or {}
            return d.get("eval:", [""])[0].lower() == "false" or bool(skip & d.keys())
        cwd = os.getcwd(); os.chdir(p.parent)
        try: CaptureShell(p).run_all(nb, exc_stop=True, preproc=no_eval)
        finally: os.chdir(cwd)
        raw = read_nb(p)
        for cell, done in zip(raw.cells, nb.cells):
            if cell.cell_type != "code": continue
            hidden = (getattr(done, "directives_", {}) or {}).get("output:", [""])[0].lower() == "false"
            cell["outputs"] = [] if hidden else done.get("outputs", [])  # `#| output: false`: e.g. images we may not redistribute
        write_nb(raw, p); print(f"{p}: executed, outputs kept")

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Execute notebooks in place, keeping their outputs.")
    ap.add_argument("notebooks", nargs="+")
    ap.add_argument("--flags", default="", help="comma-separated cell flags to run anyway, e.g. slow")
    a = ap.parse_args()
    main(a.notebooks, [f for f in a.flags.split(",") if f])
