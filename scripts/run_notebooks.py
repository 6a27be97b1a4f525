"""Execute library notebooks in place, keeping their outputs (figures, tables) for readers; cells flagged in
settings.ini's `tst_flags` (slow, gpu) are skipped, as under `nbdev_test`; cells marked `#| output: false` run but keep
no output. Then run `nbdev_clean`.

Stored figures are kept at display resolution: a PNG wider than `MAX_WIDTH` pixels is downscaled and re-encoded.

Usage: .venv/bin/python scripts/run_notebooks.py [--flags slow] nbs/00_data.ipynb [...]
(`--flags slow` also runs the cells flagged slow, so that their figures are stored too;
`--shrink-only` leaves the outputs as they are but downscales their figures.)"""
import argparse, base64, io, os
from pathlib import Path
from execnb.nbio import read_nb, write_nb
from execnb.shell import CaptureShell
from nbdev.config import get_config
from nbdev.process import NBProcessor

MAX_WIDTH = 900  # pixels: about a notebook column at 100 % zoom

def shrink_png(data:str, max_width:int=MAX_WIDTH) -> str:
    "A base64 PNG no wider than `max_width` (downscaled with antialiasing) in 256 colours (dithered: the same to the eye at that size)."
    from PIL import Image
    img = Image.open(io.BytesIO(base64.b64decode(data)))
    if img.mode == "P": return data  # already shrunk: quantising again would only degrade it
    img = img.convert("RGB")
    if img.width > max_width: img = img.resize((max_width, round(img.height * max_width / img.width)), Image.LANCZOS)
    buf = io.BytesIO(); img.quantize(256).save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode() if buf.tell() < len(data) * 3 // 4 else data

def shrink_outputs(cells):
    "Downscale every stored PNG of `cells` in place (see `shrink_png`)."
    for cell in cells:
        for out in cell.get("outputs", []):
            if "image/png" in out.get("data", {}): out["data"]["image/png"] = shrink_png(out["data"]["image/png"])
            for k in [k for k in out.get("metadata", {}).get("image/png", {}) if k in ("width", "height")]: del out["metadata"]["image/png"][k]

def main(paths, force=(), shrink_only=False):
    skip = set(get_config().tst_flags.split()) - set(force)
    os.environ.setdefault("MPLBACKEND", "Agg")
    for p in map(Path, paths):
        if shrink_only:
            raw = read_nb(p); shrink_outputs(raw.cells); write_nb(raw, p); print(f"{p}: figures at display resolution"); continue
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
        shrink_outputs(raw.cells)
        write_nb(raw, p); print(f"{p}: executed, outputs kept")

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Execute notebooks in place, keeping their outputs.")
    ap.add_argument("notebooks", nargs="+")
    ap.add_argument("--flags", default="", help="comma-separated cell flags to run anyway, e.g. slow")
    ap.add_argument("--shrink-only", action="store_true", help="do not execute: only downscale the stored figures")
    a = ap.parse_args()
    main(a.notebooks, [f for f in a.flags.split(",") if f], a.shrink_only)
