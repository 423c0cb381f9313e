"""A first run, a same-parameter rerun and a method change of the flow, for A/B comparisons.

Run it once per version of the code, alternating, to compare two commits on one machine:

    git worktree add /tmp/before <commit> && ln -s ../flows /tmp/before/anon_tasks/flows
    (cd /tmp/before && PYTHONPATH=/tmp/before $OLDPWD/.venv/bin/python \\
        $OLDPWD/benchmarks/rerun_ab.py)
    .venv/bin/python benchmarks/rerun_ab.py

Each call starts its own temporary Prefect server (not timed) and writes into a new folder.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import anon_tasks  # first: a PYTHONPATH checkout wins over the installed one

DEFAULT_DATASET = Path(__file__).resolve().parent.parent.parent / "shared/data/wider-dev/images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default=str(DEFAULT_DATASET))
    args = parser.parse_args()
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    import prefect.settings as prefect_settings
    from prefect.testing.utilities import prefect_test_harness

    from anon_tasks import AnonymizeMethod, DetectionSettings, MaskSettings  # any layout
    from anon_tasks.flows import anonymize_dataset

    updates = {prefect_settings.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}
    cases = [
        ("first run", MaskSettings()),
        ("same rerun", MaskSettings()),
        ("method change", MaskSettings(method=AnonymizeMethod.MOSAIC)),
    ]
    lines = []
    with (
        prefect_settings.temporary_settings(updates=updates),
        prefect_test_harness(),
        tempfile.TemporaryDirectory() as folder,
    ):
        dest = str(Path(folder) / "out")
        for label, masking in cases:
            started = time.perf_counter()
            summary = anonymize_dataset(args.folder, dest, DetectionSettings(device="cpu"), masking)
            lines.append(
                f"{label:>13}: {time.perf_counter() - started:6.2f} s "
                f"(read {summary.images_read}, inferred {summary.images_inferred})"
            )
    print(f"code: {Path(anon_tasks.__file__).parent.parent}")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
