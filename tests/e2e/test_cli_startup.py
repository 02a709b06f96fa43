"""The `vigil` command starts fast and ends cleanly: `--help` loads neither the Azure SDKs nor
fhir.resources, and output piped into a reader that goes away ends without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_help_imports_neither_the_azure_sdks_nor_fhir_resources() -> None:
    probe = ("import sys\nfrom runtime.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
             "heavy = sorted(m for m in sys.modules if m.startswith(('azure', 'fhir.resources', 'fhir_core')))\n"
             "print('HEAVY', heavy, file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=_env(), capture_output=True, text=True,
                          timeout=60)
    assert "HEAVY []" in done.stderr, done.stderr[-2000:]


def test_json_output_into_a_closed_pipe_ends_without_a_traceback(tmp_path: Path) -> None:
    sample = tmp_path / "samples.jsonl"
    line = ('{"deviceId": "cuff-1", "patientId": "p1", "type": "heart_rate", '
            '"time": "2026-11-20T07:00:00Z", "values": {"bpm": 64}}\n')
    sample.write_text(line * 400)
    vigil = subprocess.Popen([sys.executable, "-m", "runtime.cli", "--data-dir", str(tmp_path / "d"),
                              "templates", "check", "--json", str(sample)],
                             cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert vigil.stdout is not None
    vigil.stdout.read(10)  # `| head -c 10`: read a little, then go away
    vigil.stdout.close()
    err = vigil.stderr.read().decode() if vigil.stderr else ""
    code = vigil.wait(timeout=60)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err[-2000:]
    assert code != 0
