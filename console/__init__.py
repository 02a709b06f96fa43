"""The care team's web console and its CLI: inbox, alert detail, patient page, data gaps, billing
progress and enrollment over the same FHIR store and handlers the pipeline uses (docs/console.md)."""
