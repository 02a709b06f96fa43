"""On the deployed platform (Python 3.11, azure-functions 1.26), every function's parameter
annotations pass the checks the worker makes before it runs any function.

The worker takes each binding's converter from azure-functions' binding registry and refuses the
whole app if a trigger parameter's annotation fails `check_input_type_annotation` (or an output's
`check_output_type_annotation`), or is neither a type nor a `typing` generic. The same checks run
here on the app's own functions; tests/integration/test_real_worker_indexing.py runs the real
worker (Python 3.13) end to end.
"""

from __future__ import annotations

import typing

import azure.functions as func
import pytest
from azure.functions._thirdparty import typing_inspect
from azure.functions.meta import get_binding_registry

import function_app
from runtime.host import registered_functions

OUT = 1  # azure.functions.decorators.core.BindingDirection.OUT


def _checked_bindings() -> list[tuple[str, str, object, bool]]:
    """(function, binding type, annotation, is output) for every binding of every function."""
    out = []
    for fn in registered_functions(function_app.app):
        hints = typing.get_type_hints(fn.get_user_function())
        for binding in fn.get_bindings():
            name = "return" if binding.name == "$return" else binding.name
            assert name in hints, f"{fn.get_function_name()}: binding {binding.name} has no annotation"
            anno = hints[name]
            binding_type = binding.type
            # The worker binds a str/bytes input as the generic binding (it has no implicit output).
            if anno in (str, bytes) and binding.direction != OUT:
                binding_type = "generic"
            out.append((fn.get_function_name(), binding_type, anno, binding.direction == OUT))
    return out


BINDINGS = _checked_bindings()


def test_every_function_has_its_bindings_checked() -> None:
    assert {f for f, *_ in BINDINGS} == {
        "ingest_device_messages", "on_fhir_event", "alert_sweep", "escalation_sweep", "reminder_sweep",
        "http_ingest", "health", "acknowledge_alert", "on_acs_event", "pull_fhir_changes",
        "fhir_notification", "retention_purge", "console", "lake_export"}


@pytest.mark.parametrize(("function", "binding_type", "annotation", "is_out"), BINDINGS,
                         ids=[f"{f}-{t}" for f, t, *_ in BINDINGS])
def test_annotation_passes_its_converters_check(function: str, binding_type: str, annotation: object,
                                                is_out: bool) -> None:
    assert isinstance(annotation, type) or typing_inspect.is_generic_type(annotation), (
        f"{function}: {annotation!r} is neither a type nor a typing generic: the worker refuses it")
    converter = get_binding_registry().get(binding_type)
    assert converter is not None, f"{function}: azure-functions has no converter for {binding_type}"
    check = converter.check_output_type_annotation if is_out else converter.check_input_type_annotation
    assert check(annotation), f"{function}: {binding_type} refuses the annotation {annotation!r}"


def test_the_event_hub_check_refuses_the_builtin_generic_the_batch_must_not_use() -> None:
    converter = get_binding_registry().get("eventHubTrigger")
    assert converter.check_input_type_annotation(typing.List[func.EventHubEvent])  # noqa: UP006
    assert not converter.check_input_type_annotation(list[func.EventHubEvent])
