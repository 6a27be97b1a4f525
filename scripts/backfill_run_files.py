"""Give runs made before 2026-12-05 what a report now reads from a run's own files: `python scripts/backfill_run_files.py reports/camvid-study`.

Runs since then record the images holding each training class (`class_image_counts` in `metrics.json`, Fig. 2's dots) and
keep their example test images and labels in `examples.npz` (Figs. 4-5), so that a report is redrawn from the committed
files without the data. Older runs lack both. This reads them once from the run's own dataset (its `config.json`: the
same split, size and cache), adds them, and changes nothing else: the metrics, the predictions and their indices stay
as trained. Needs the data; a run that already has them is left alone, so a second call does nothing.
"""
import json, sys
from pathlib import Path
from pat_nbdev.checkpoint import write_json
from pat_nbdev.data import per_image_class_counts
from pat_nbdev.experiments import run_finished, run_folders
from pat_nbdev.figures import run_dataset
from pat_nbdev.runfiles import read_examples, write_examples

def backfill(run:Path) -> list[str]:
    "What was added to finished run `run`: 'class_image_counts', 'examples' (none when it had both)."
    added, metrics = [], json.loads((run / 'metrics.json').read_text())
    if 'class_image_counts' not in metrics:
        metrics['class_image_counts'] = (per_image_class_counts(run_dataset(run, 'train')) > 0).sum(0).tolist()
        write_json(metrics, run / 'metrics.json'); added.append('class_image_counts')
    if (run / 'examples.npz').exists() and 'image' not in (ex := read_examples(run / 'examples.npz')):
        write_examples(run, run_dataset(run, 'test'), ex['index'].tolist(), ex['pred']); added.append('examples')
    return added

def main(study:str) -> int:
    runs = [f for f in run_folders(Path(study) / 'runs') if run_finished(f)]
    if not runs: sys.exit(f"backfill_run_files: no finished run under {study}/runs")
    for run in runs: print(f"{run}: {', '.join(backfill(run)) or 'had both'}")
    return 0

if __name__ == '__main__': sys.exit(main(*sys.argv[1:2]) if len(sys.argv) == 2 else f"usage: {sys.argv[0]} STUDY_DIR")
