"""De-identification with the FHIR anonymizer's configuration format (docs/analytics.md, "De-identification")."""

from analytics.deid.config import ConfigError, load_config, parse_config
from analytics.deid.engine import Anonymizer, DeidError

__all__ = ["Anonymizer", "ConfigError", "DeidError", "load_config", "parse_config"]
