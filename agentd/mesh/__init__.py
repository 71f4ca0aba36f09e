"""The MQTT mesh: topics, the link (session, inbound, outbox), peer checks, refusals, the one-shot client."""
