"""Ready-made device + FHIR mapping template pairs (`<name>.devicecontent.json`,
`<name>.fhirmapping.json`). Data only; see `ingest.templates.presets` and docs/templates.md."""
