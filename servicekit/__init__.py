"""The parts every Warmi service is built from: configuration, database,
outbox and inbox, reliable event handling, telemetry. Nothing here knows a
service's domain."""
