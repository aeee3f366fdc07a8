"""MODE end to end, resumable: data, clustering, seed, experts, assembly, baselines, evaluation and report.

    python train/job.py --recipe offline-mix --output runs/offline-mix [--smoke] [--seeds K]

The same as `python -m modeling_mode.job` and `mode-job`; `--help` lists the flags (`modeling_mode.job.main`).
"""

from modeling_mode.job.main import command

if __name__ == "__main__":
    command()
