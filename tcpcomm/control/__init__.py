"""
The operator's side: the admin HTTP API, its OpenAPI document, the metrics
and the dashboard. It reads the hub and the wire; nothing but the modules
that build the services (L{tcpcomm.tap}) imports it.
"""
