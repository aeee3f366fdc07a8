"""MODE end to end, resumable: data, clustering, seed, experts, assembly, baselines, evaluation and report.

    python train/pipeline.py --recipe offline-mix --output runs/offline-mix [--smoke]

Every stage runs the project's own scripts and is skipped when its output exists, so a re-run resumes. The report
is `OUTPUT/report.md`, with PNG plots beside it; each stage's log is under `OUTPUT/logs/`.
"""

import argparse
from pathlib import Path

from modeling_mode.pipeline import RECIPES, run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="offline-mix")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--smoke", action="store_true", help="the same stages on a few hundred pairs, in minutes")
    parser.add_argument("--encoder", help="caption encoder for clustering (default: all-MiniLM-L6-v2)")
    args = parser.parse_args()
    report = run(args.recipe, args.output, smoke=args.smoke, encoder=args.encoder)
    print(f"report: {report}")


if __name__ == "__main__":
    main()
