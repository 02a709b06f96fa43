"""SQL-on-FHIR v2 ViewDefinition runner (https://build.fhir.org/ig/FHIR/sql-on-fhir-v2/)."""

from analytics.views.definition import ViewDefinitionError, compile_view
from analytics.views.runner import run_view

__all__ = ["ViewDefinitionError", "compile_view", "run_view"]
