"""A non-editable install gives a working `rlhf-interp` and no bare top-level `cli` or `reports` module."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_non_editable_install(tmp_path):
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target),
         str(ROOT)],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr
    top = {p.name for p in target.iterdir()}
    assert "rlhf_interp" in top and "cli" not in top and "reports" not in top
    assert (target / "rlhf_interp" / "cli" / "app.py").exists()
    assert (target / "rlhf_interp" / "embedded" / "model" / "model.safetensors").exists()
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run([sys.executable, "-m", "rlhf_interp.cli.app", "--help"], capture_output=True, text=True,
                          cwd=tmp_path, env=env)
    assert proc.returncode == 0 and "sample" in proc.stdout, proc.stderr
    proc = subprocess.run([sys.executable, "-c", "import rlhf_interp, sys; print(rlhf_interp.__file__)"],
                          capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.stdout.strip().startswith(str(target)), proc.stdout
