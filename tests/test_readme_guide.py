"""The README's deployment guide, pasted into a shell as a new user pastes it, against a real
`prefect server start` on 127.0.0.1: its blocks are read from the README itself, so a changed
README breaks this test, not the user.

The only changes made to the pasted text: the server's port (4200 may be taken) and the
example's dataset folders; the shell runs with ``set -euo pipefail``, so any failing line fails
the test. A host without a GPU (as CI's) also checks that the GPU line works there.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from tests.test_deployments import free_port, stop_group

REPO_ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SECTION = "## Run it as a deployment"


def guide_blocks() -> list[str]:
    """The shell blocks of the README's deployment section, in order."""
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)


def test_the_guide_has_a_setup_block_and_a_run_block() -> None:
    setup, run, *_ = guide_blocks()
    assert "prefect server start" in setup
    assert "deploy --all" in setup
    assert "prefect deployment run" in run
    for line in setup.splitlines():  # what starts and stays running is sent to the background
        if line.startswith(("prefect server start", "anonymize-workers", "prefect worker start")):
            assert line.rstrip().endswith("&"), line


def test_the_deployment_guide_works_when_pasted(tmp_path, astronaut_rgb) -> None:
    setup, run, *_ = guide_blocks()
    port = free_port()
    setup = setup.replace(
        "prefect server start --host 127.0.0.1",
        f"prefect server start --host 127.0.0.1 --port {port}",
    ).replace("127.0.0.1:4200", f"127.0.0.1:{port}")
    source, dest = tmp_path / "raw", tmp_path / "anonymized"
    (source / "people").mkdir(parents=True)
    Image.fromarray(astronaut_rgb).save(source / "people" / "astronaut.png")
    Image.fromarray(np.roll(astronaut_rgb, 90, axis=1)).save(source / "rolled.jpg")
    run = run.replace("/data/raw", str(source)).replace("/data/anonymized", str(dest))
    home = tmp_path / "prefect-home"
    home.mkdir()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "ANON_TASKS_LOCK_DIR": str(tmp_path / "locks"),
    }
    for name in ("PREFECT_API_URL", "PREFECT_PROFILES_PATH", "ANON_TASKS_DEVICES"):
        env.pop(name, None)
    log = tmp_path / "shell.log"
    script = f"set -euo pipefail\ncd {REPO_ROOT}\n{setup}\n{run}\n"
    with log.open("wb") as out:
        shell = subprocess.Popen(
            ["bash", "-c", script],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its background jobs stay in its group: stopped below
        )
        try:
            returncode = shell.wait(timeout=420)
        finally:
            stop_group(shell)
    output = log.read_text(errors="replace")
    assert returncode == 0, output[-4000:]
    assert "Completed" in output, output[-4000:]
    assert (dest / "people" / "astronaut.png").is_file()
    assert (dest / "rolled.jpg").is_file()
    manifest = (dest / "_anonymize" / "manifest.jsonl").read_text()
    rows = [json.loads(line) for line in manifest.splitlines()]
    assert {row["source"] for row in rows} == {"people/astronaut.png", "rolled.jpg"}
    assert all(row["status"] == "written" and row["faces"] for row in rows)
