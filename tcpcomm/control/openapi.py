"""The OpenAPI document of the admin API, served at C{/openapi.json}."""

from __future__ import annotations

from typing import Any

from tcpcomm import __version__


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _allRequired(properties: dict[str, Any]) -> dict[str, Any]:
    """
    A schema for an object of C{properties} (their schemas by name), every
    one of them required.
    """
    return {"type": "object", "properties": properties, "required": list(properties)}


def _object(**properties: str) -> dict[str, Any]:
    """
    A schema for an object whose every property is required, each of the
    given JSON type.
    """
    return _allRequired({name: {"type": kind} for name, kind in properties.items()})


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_TEXT_BODY = {
    "required": True,
    "description": "The message text (UTF-8, not empty); it is encoded with the daemon's "
    "--encoding.",
    "content": {"text/plain": {"schema": {"type": "string", "minLength": 1}}},
}

_SEND_ERRORS = {
    "400": _error(
        "The text cannot be sent: empty, not UTF-8, not encodable, or a newline in line framing."
    ),
    "413": _error("The body, or the message once encoded, is over --max-message-size."),
}

_TTL = {
    "name": "ttl",
    "in": "query",
    "required": False,
    "description": "Seconds the message may wait for a client that is not connected; without "
    "it, a send to an absent client is a 404. A bad ttl (not a positive number) is a 400.",
    "schema": {"type": "number", "exclusiveMinimum": True, "minimum": 0},
}

_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "The client's id as GET /clients lists it, URL-encoded ('unix#1' is 'unix%231').",
    "schema": {"type": "string"},
}


def _common(protected: dict[str, Any]) -> dict[str, Any]:
    return {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Is the daemon up? Never needs a token.",
                "security": [],
                "responses": {
                    "200": _json(
                        "Up.",
                        {
                            "type": "object",
                            "properties": {
                                "status": {"type": "string", "enum": ["ok"]},
                                "lastReload": {
                                    "description": "The last load of the settings: the "
                                    "start, or the last SIGHUP reload.",
                                    **_allRequired(
                                        {
                                            "time": {"type": "string", "format": "date-time"},
                                            "ok": {"type": "boolean"},
                                            "error": {"type": "string", "nullable": True},
                                        }
                                    ),
                                },
                            },
                            "required": ["status"],
                        },
                    )
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics.",
                "responses": {
                    "200": {
                        "description": "Metrics in Prometheus' text format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **protected,
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "responses": {
                    "200": _json("The OpenAPI document.", {"type": "object"}),
                    **protected,
                },
            }
        },
    }


def openapi(role: str, tokenRequired: bool) -> dict[str, Any]:
    """
    The OpenAPI 3.0 document of the admin API of a C{"server"} or C{"client"}.
    """
    protected = {"401": _error("No valid bearer token.")} if tokenRequired else {}
    paths = _common(protected)
    if role == "server":
        paths.update(
            {
                "/": {
                    "get": {
                        "operationId": "dashboard",
                        "summary": "The dashboard page (it holds no data, so needs no token).",
                        "security": [],
                        "responses": {
                            "200": {
                                "description": "An HTML page.",
                                "content": {"text/html": {"schema": {"type": "string"}}},
                            }
                        },
                    }
                },
                "/clients": {
                    "get": {
                        "operationId": "listClients",
                        "summary": "Every connected client.",
                        "responses": {
                            "200": {
                                **_json(
                                    "The clients.",
                                    {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Client"},
                                    },
                                ),
                                "links": {
                                    name: {
                                        "operationId": name,
                                        "parameters": {"id": "$response.body#/0/id"},
                                    }
                                    for name in ("getClient", "sendToClient", "disconnectClient")
                                },
                            },
                            **protected,
                        },
                    }
                },
                "/clients/{id}": {
                    "parameters": [_ID],
                    "get": {
                        "operationId": "getClient",
                        "summary": "One connected client.",
                        "responses": {
                            "200": _json("The client.", {"$ref": "#/components/schemas/Client"}),
                            "404": _error("No such client is connected."),
                            **protected,
                        },
                    },
                },
                "/clients/{id}/messages": {
                    "parameters": [_ID],
                    "post": {
                        "operationId": "sendToClient",
                        "summary": "Send one message to one client; with ttl, queue it for a "
                        "client that is away.",
                        "parameters": [_TTL],
                        "requestBody": _TEXT_BODY,
                        "responses": {
                            "200": _json(
                                "Sent.",
                                _object(id="string", sent="integer"),
                            ),
                            "202": _json(
                                "The client is away: queued (and stored, with --queue-dir); "
                                "position 1 is delivered first.",
                                _allRequired(
                                    {
                                        "id": {"type": "string"},
                                        "queued": {"type": "boolean", "enum": [True]},
                                        "position": {"type": "integer", "minimum": 1},
                                    }
                                ),
                            ),
                            "404": _error("No such client is connected (and no ttl was given)."),
                            "503": _error("The queue store could not be loaded at start."),
                            "507": _error(
                                "Queueing it would go over --queue-max-messages, "
                                "--queue-max-bytes or --queue-total-bytes (the message names "
                                "which)."
                            ),
                            **_SEND_ERRORS,
                            "400": _error(
                                "A ttl that is not a positive number, or text that cannot be "
                                "sent: empty, not UTF-8, not encodable, or a newline in line "
                                "framing."
                            ),
                            **protected,
                        },
                    },
                },
                "/queues": {
                    "get": {
                        "operationId": "listQueues",
                        "summary": "The messages waiting for clients that are away.",
                        "responses": {
                            "200": _json(
                                "Each client id with messages waiting.",
                                _allRequired(
                                    {
                                        "queues": {
                                            "type": "array",
                                            "items": _allRequired(
                                                {
                                                    "id": {"type": "string"},
                                                    "messages": {"type": "integer", "minimum": 1},
                                                    "bytes": {"type": "integer", "minimum": 0},
                                                    "oldestAgeSeconds": {
                                                        "type": "number",
                                                        "minimum": 0,
                                                    },
                                                }
                                            ),
                                        }
                                    }
                                ),
                            ),
                            **protected,
                        },
                    }
                },
                "/clients/{id}/disconnect": {
                    "parameters": [_ID],
                    "post": {
                        "operationId": "disconnectClient",
                        "summary": "Close one client's connection.",
                        "responses": {
                            "200": _json(
                                "Closing.",
                                _object(id="string", disconnected="boolean"),
                            ),
                            "404": _error("No such client is connected."),
                            **protected,
                        },
                    },
                },
                "/broadcast": {
                    "post": {
                        "operationId": "broadcast",
                        "summary": "Send one message to every client.",
                        "requestBody": _TEXT_BODY,
                        "responses": {
                            "200": _json(
                                "Sent; how many clients got it.",
                                _allRequired({"received": {"type": "integer", "minimum": 0}}),
                            ),
                            **_SEND_ERRORS,
                            **protected,
                        },
                    }
                },
                "/events": {
                    "get": {
                        "operationId": "events",
                        "summary": "Messages in and out and clients coming and going, as "
                        "Server-Sent Events (JSON objects with kind, peer, text, time).",
                        "responses": {
                            "200": {
                                "description": "An endless event stream.",
                                "content": {"text/event-stream": {"schema": {"type": "string"}}},
                            },
                            **protected,
                        },
                    }
                },
            }
        )
    else:
        paths.update(
            {
                "/status": {
                    "get": {
                        "operationId": "status",
                        "summary": "How the connection to the server is doing.",
                        "responses": {
                            "200": _json("The status.", {"$ref": "#/components/schemas/Status"}),
                            **protected,
                        },
                    }
                },
                "/messages": {
                    "post": {
                        "operationId": "sendToServer",
                        "summary": "Send one message to the server.",
                        "requestBody": _TEXT_BODY,
                        "responses": {
                            "200": _json(
                                "Sent.",
                                _object(server="string", sent="integer"),
                            ),
                            "503": _error("Not connected to the server right now."),
                            **_SEND_ERRORS,
                            **protected,
                        },
                    }
                },
            }
        )
    nullableString = {"type": "string", "nullable": True}
    document: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": f"tcpcomm {role} admin API",
            "version": __version__,
            "description": "Errors are JSON objects with an 'error' message.",
        },
        "paths": paths,
        "components": {
            "schemas": {
                "Error": _object(error="string"),
                "Client": _allRequired(
                    {
                        "id": {"type": "string"},
                        "peer": {"type": "string"},
                        "tlsSubject": nullableString,
                        "connectedSince": {"type": "string", "format": "date-time"},
                        "lastMessage": {**nullableString, "format": "date-time"},
                        "messagesIn": {"type": "integer", "minimum": 0},
                        "messagesOut": {"type": "integer", "minimum": 0},
                        "bytesIn": {"type": "integer", "minimum": 0},
                        "bytesOut": {"type": "integer", "minimum": 0},
                    }
                ),
                "Status": _allRequired(
                    {
                        "connected": {"type": "boolean"},
                        "server": {"type": "string"},
                        "since": {**nullableString, "format": "date-time"},
                        "connections": {"type": "integer", "minimum": 0},
                        "reconnects": {"type": "integer", "minimum": 0},
                        "failedAttempts": {"type": "integer", "minimum": 0},
                        "lastError": nullableString,
                        "messagesIn": {"type": "integer", "minimum": 0},
                        "messagesOut": {"type": "integer", "minimum": 0},
                    }
                ),
            }
        },
    }
    if tokenRequired:
        document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        document["security"] = [{"bearer": []}]
    return document
