"""A minimal stand-in for the Functions host's gRPC messages (`FunctionRpc_pb2`).

`azure-functions-runtime` is the library half of the Python worker: the proxy worker that talks gRPC
to the host hands it the generated protobuf module as `request.properties["protos"]`, and the library
ships no protos of its own. Only the messages its indexing path builds are defined here, with the
field names and enum values of the Functions language-worker protocol
(https://github.com/Azure/azure-functions-language-worker-protobuf, `src/proto/FunctionRpc.proto`).
Like generated protobuf classes, a constructor refuses a field the message does not have and an enum
field refuses a name or number outside its enum, so a metadata build that the host would refuse
fails here too.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, ClassVar


class _Message:
    _fields: ClassVar[tuple[str, ...]] = ()
    _enums: ClassVar[dict[str, dict[str, int]]] = {}

    def __init__(self, **kwargs: Any) -> None:
        unknown = set(kwargs) - set(self._fields)
        if unknown:
            raise ValueError(f"Protocol message {type(self).__name__} has no fields {sorted(unknown)}")
        for name in self._fields:
            value = kwargs.get(name)
            if name in self._enums and value is not None:
                value = self._enum_value(name, value)
            setattr(self, name, value)

    def _enum_value(self, field: str, value: Any) -> int:
        enum = self._enums[field]
        if isinstance(value, str):
            if value not in enum:
                raise ValueError(f"{type(self).__name__}.{field}: unknown enum label {value!r}")
            return enum[value]
        if isinstance(value, bool) or not isinstance(value, int) or value not in enum.values():
            raise ValueError(f"{type(self).__name__}.{field}: unknown enum number {value!r}")
        return value

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self._fields:
            out[name] = _plain(getattr(self, name))
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, _Message):
        return value.to_dict()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


class BindingInfo(_Message):
    # enum Direction { in = 0; out = 1; inout = 2; }  enum DataType { undefined = 0; string = 1; ... }
    out = 1
    inout = 2
    undefined = 0
    string = 1
    binary = 2
    stream = 3
    _fields = ("type", "direction", "data_type", "properties")
    _enums: ClassVar[dict[str, dict[str, int]]] = {
        "direction": {"in": 0, "out": 1, "inout": 2},
        "data_type": {"undefined": 0, "string": 1, "binary": 2, "stream": 3},
    }


# `in` is a Python keyword: generated code exposes it only through getattr.
setattr(BindingInfo, "in", 0)  # noqa: B010


class RpcRetryOptions(_Message):
    _fields = ("max_retry_count", "delay_interval", "minimum_interval", "maximum_interval", "retry_strategy")
    _enums: ClassVar[dict[str, dict[str, int]]] = {
        "retry_strategy": {"exponential_backoff": 0, "fixed_delay": 1}
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name in ("delay_interval", "minimum_interval", "maximum_interval"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, timedelta):
                raise TypeError(f"RpcRetryOptions.{name} must be a Duration (timedelta), got {value!r}")


class RpcFunctionMetadata(_Message):
    _fields = (
        "name", "directory", "script_file", "entry_point", "bindings", "is_proxy", "status", "language",
        "raw_bindings", "function_id", "managed_dependency_enabled", "retry_options", "properties",
    )


class RpcException(_Message):
    _fields = ("source", "stack_trace", "message", "is_user_exception", "type")


class StatusResult(_Message):
    Failure = 0
    Success = 1
    Cancelled = 2
    _fields = ("status", "result", "exception", "logs")


class WorkerMetadata(_Message):
    _fields = ("runtime_name", "runtime_version", "worker_version", "worker_bitness", "custom_properties")


class WorkerInitResponse(_Message):
    _fields = ("worker_version", "capabilities", "result", "worker_metadata")


class FunctionMetadataResponse(_Message):
    _fields = ("function_metadata_results", "result", "use_default_metadata_indexing")


class FunctionLoadResponse(_Message):
    _fields = ("function_id", "result", "is_dependency_downloaded")
