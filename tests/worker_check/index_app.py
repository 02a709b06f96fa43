"""Index a Functions app with the real Python worker library and print the metadata the host gets.

Run with the Python 3.13 environment built from `requirements-worker.txt` (`make worker-env`):

    .venv-worker/bin/python tests/worker_check/index_app.py APP_DIR

It drives `azure_functions_runtime` through the same requests the host sends at start-up:
`WorkerInitRequest` (the worker imports `function_app.py`, indexes every function with
`loader.index_function_app` and builds its `RpcFunctionMetadata` with `process_indexed_function`,
validating each parameter's annotation against its binding), then `FunctionsMetadataRequest` and a
`FunctionLoadRequest` per function. It prints one JSON object: `{"ok": true, "functions": [...]}`
with each function's name, bindings (type, direction, data type), raw binding JSON and retry
options, or `{"ok": false, "stage": ..., "error": ...}` with the worker's own error message (exit 1).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import worker_protos


def _request(**kinds: Any) -> SimpleNamespace:
    return SimpleNamespace(
        request=SimpleNamespace(**kinds),
        properties={"host": "127.0.0.1", "protos": worker_protos},
    )


def _failure(stage: str, result: Any) -> dict[str, Any]:
    exc = getattr(result, "exception", None)
    return {
        "ok": False,
        "stage": stage,
        "error": getattr(exc, "message", None) or repr(result),
        "stack_trace": getattr(exc, "stack_trace", None),
    }


async def index(app_dir: Path) -> dict[str, Any]:
    # What the proxy worker does before handing over: the app directory is the import root and cwd.
    sys.path.insert(0, str(app_dir))
    os.chdir(app_dir)
    import azure_functions_runtime as runtime

    init = await runtime.worker_init_request(_request(worker_init_request=SimpleNamespace(
        capabilities={}, function_app_directory=str(app_dir))))
    if init.result.status != worker_protos.StatusResult.Success:
        return _failure("WorkerInitRequest", init.result)

    meta = await runtime.functions_metadata_request(_request())
    if meta.result.status != worker_protos.StatusResult.Success:
        return _failure("FunctionsMetadataRequest", meta.result)
    results = meta.function_metadata_results or []
    if not results:
        return {"ok": False, "stage": "FunctionsMetadataRequest", "error": "the worker indexed no function"}

    functions = []
    for fm in results:
        load = await runtime.function_load_request(
            _request(function_load_request=SimpleNamespace(function_id=fm.function_id)))
        if load.result.status != worker_protos.StatusResult.Success:
            return _failure(f"FunctionLoadRequest {fm.name}", load.result)
        functions.append({
            "name": fm.name,
            "function_id": fm.function_id,
            "entry_point": fm.entry_point,
            "script_file": fm.script_file,
            "language": fm.language,
            "bindings": {name: b.to_dict() for name, b in fm.bindings.items()},
            "raw_bindings": [json.loads(raw) for raw in fm.raw_bindings],
            "retry_options": fm.retry_options.to_dict() if fm.retry_options else None,
            "properties": dict(fm.properties),
        })
    return {"ok": True, "worker_python": f"{sys.version_info.major}.{sys.version_info.minor}",
            "functions": functions}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: index_app.py APP_DIR", file=sys.stderr)
        return 2
    report = asyncio.run(index(Path(argv[1]).resolve()))
    print(json.dumps(report, default=str))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
