"""Does the ranking change with training length? `python scripts/compare_regimes.py`: the CamVid study against the short study.

Writes `regimes.csv`, `regimes.md` and `fig_regimes.png` into reports/camvid-study/ from the two studies' committed
`runs.csv` (`pat_nbdev.regime.write_regime_comparison`); rebuild the CamVid study's report first (`pat-reproduce --preset
camvid-study --out reports/camvid-study --report-only`), so that its `runs.csv` holds every committed run.
"""
import sys
from pathlib import Path
from pat_nbdev.experiments import PRESETS
from pat_nbdev.regime import write_regime_comparison

REPORTS = Path(__file__).resolve().parents[1] / 'reports'
REGIMES = {  # label -> (the study's runs.csv, its preset): the short regime first
    '12 epochs': (REPORTS / 'cpu-study' / 'runs.csv', 'cpu-study'),
    '50 epochs': (REPORTS / 'camvid-study' / 'report' / 'runs.csv', 'camvid-study'),
}


def main() -> int:
    missing = [str(p) for p, _ in REGIMES.values() if not p.is_file()]
    if missing: sys.exit(f"compare_regimes: no {', '.join(missing)}: expected each study's committed runs.csv")
    source = '**Data and training.** ' + ' '.join(f"{label}: {PRESETS[preset].description}." for label, (_, preset) in REGIMES.items())
    table = write_regime_comparison({label: p for label, (p, _) in REGIMES.items()}, REPORTS / 'camvid-study', source)
    print(table.to_string(), f"\nSpearman correlation of the rankings: {table.attrs['spearman']}", sep='\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
