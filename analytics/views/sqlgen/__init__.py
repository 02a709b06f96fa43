"""ViewDefinitions as SQL for DuckDB, Spark SQL and Synapse serverless (docs/analytics.md, "Views as SQL")."""

from analytics.views.sqlgen.backend import SqlGenError
from analytics.views.sqlgen.generate import DIALECTS, GeneratedView, generate, lake_schema

__all__ = ["DIALECTS", "GeneratedView", "SqlGenError", "generate", "lake_schema"]
