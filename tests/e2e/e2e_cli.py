"""Running `medlake` as a person does, for the e2e tests: a real process on a DuckDB store in the test's folder."""
import os
import subprocess
import sys
from pathlib import Path

MEDLAKE = Path(sys.executable).with_name("medlake")
SHARED = Path(__file__).resolve().parents[3] / "shared"


def run(tmp_path, *args, ok=True):
    env = {**os.environ, "MEDLAKE_STORE": f"duckdb:{tmp_path / 'data' / 'store.duckdb'}", "COLUMNS": "200"}
    env.pop("MEDLAKE_DATA_DIR", None)
    p = subprocess.run([str(MEDLAKE), *map(str, args)], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    if ok:
        assert p.returncode == 0, p.stderr
    return p
