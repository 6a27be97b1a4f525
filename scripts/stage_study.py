"""Stage a study's finished runs for a commit: `python scripts/stage_study.py reports/camvid-study`.

A study accumulates run by run across sessions and machines. Only finished runs are committed (a `metrics.json` with
test metrics), and of each only its small files; checkpoints, logs and the executed notebook stay out (see .gitignore).
Unfinished runs are listed and left alone: the study's command resumes them from their checkpoints. A run stopped after
its test metrics but before its record (`provenance.json`) is left out too: the study's command completes its record.
"""
import subprocess, sys
from pathlib import Path
from pat_nbdev.experiments import COMMITTED_RUN_FILES, run_finished, run_folders, run_recorded



def main(study: str) -> int:
    runs = Path(study) / 'runs'
    if not runs.is_dir(): sys.exit(f"stage_study: {runs} is not a folder; expected a study folder made by pat-reproduce --out")
    folders = run_folders(runs, 'config.json')  # finished or not; not the runs set aside by --overwrite
    unfinished = [f for f in folders if not run_finished(f)]
    unrecorded = [f for f in folders if f not in unfinished and not run_recorded(f)]  # stopped before its record
    finished = [f for f in folders if f not in unfinished and f not in unrecorded]
    files = [str(f / n) for f in finished for n in COMMITTED_RUN_FILES if (f / n).exists()]
    if files:
        added = subprocess.run(['git', 'add', '--', *files], capture_output=True, text=True)
        if added.returncode: sys.exit(f"stage_study: git could not stage {study}'s runs: {(added.stderr.strip().splitlines() or ['?'])[-1]}"
                                      " (expected a study inside a git checkout)")
    name = lambda fs: ', '.join(str(f.relative_to(runs)) for f in fs) or 'none'
    print(f"staged {len(finished)} finished run(s) of {study}; not finished: {name(unfinished)}"
          + (f"; finished but not recorded (no provenance.json: run the study's command again, it completes them): {name(unrecorded)}"
             if unrecorded else ''))
    return 0


if __name__ == '__main__':
    if len(sys.argv) != 2: sys.exit(__doc__.splitlines()[0])
    sys.exit(main(sys.argv[1]))
