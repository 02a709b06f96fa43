"""The Azure Functions app: registers one blueprint per trigger family. Nothing else lives here."""

import azure.functions as func

from triggers import (
    acs_events,
    console_http,
    device_messages,
    fhir_events,
    fhir_sources,
    http_api,
    lake_export,
    retention,
    timers,
)

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(device_messages.bp)
app.register_functions(fhir_events.bp)
app.register_functions(timers.bp)
app.register_functions(http_api.bp)
app.register_functions(acs_events.bp)
app.register_functions(fhir_sources.bp)
app.register_functions(retention.bp)
app.register_functions(console_http.bp)
app.register_functions(lake_export.bp)
