"""
The OpenAPI document of the admin API, served at C{/openapi.json}, made from
the route table itself: each L{tcpcomm.control.admin.Route} carries a L{Doc}
(its summary, query parameters, request body and responses), and
L{document} walks the table, so that a route cannot be served without being
described, nor described without being served.

What a route does not say, the table does: its path parameters (each
C{{name}} in the path, described once in L{PATH_PARAMETERS}), whether it
needs the token (C{Route.public}: C{security: []} and no 401), and the 401
of every other route when a token is set. The helpers below (L{error},
L{jsonResponse}, L{allRequired}, L{TEXT_BODY}, L{SEND_ERRORS}, ...) are the
words routes share.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tcpcomm import __version__

JSON = dict[str, Any]


@dataclass(frozen=True)
class Doc:
    """
    What C{/openapi.json} says of one route.
    """

    #: The operation's stable name (schemathesis and links refer to it).
    operationId: str
    summary: str
    #: Each status the route answers (as a string: C{"200"}) and its
    #: response object; the 401 of a protected route is added for it.
    responses: Mapping[str, JSON]
    #: Query parameters (path parameters come from L{PATH_PARAMETERS}).
    parameters: Sequence[JSON] = ()
    requestBody: JSON | None = None
    #: Component schemas the responses refer to (C{#/components/schemas/NAME}),
    #: by name; routes that share one give the same schema.
    schemas: Mapping[str, JSON] = field(default_factory=dict)


def error(description: str) -> JSON:
    """
    An error response: a JSON C{{"error": ...}}.
    """
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def allRequired(properties: Mapping[str, JSON]) -> JSON:
    """
    A schema for an object of C{properties} (their schemas by name), every
    one of them required.
    """
    return {"type": "object", "properties": dict(properties), "required": list(properties)}


def simpleObject(**properties: str) -> JSON:
    """
    A schema for an object whose every property is required, each of the
    given JSON type.
    """
    return allRequired({name: {"type": kind} for name, kind in properties.items()})


def jsonResponse(description: str, schema: JSON) -> JSON:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def textResponse(description: str, mediaType: str) -> JSON:
    """
    A response whose body is text of C{mediaType}, not JSON.
    """
    return {"description": description, "content": {mediaType: {"schema": {"type": "string"}}}}


def ref(schema: str) -> JSON:
    return {"$ref": f"#/components/schemas/{schema}"}


TEXT_BODY: JSON = {
    "required": True,
    "description": "The message text (UTF-8, not empty); it is encoded with the daemon's "
    "--encoding.",
    "content": {"text/plain": {"schema": {"type": "string", "minLength": 1}}},
}

SEND_ERRORS: dict[str, JSON] = {
    "400": error(
        "The text cannot be sent: empty, not UTF-8, not encodable, or a newline in line framing."
    ),
    "413": error("The body, or the message once encoded, is over --max-message-size."),
}

#: Each path parameter a route's path may hold, by name.
PATH_PARAMETERS: dict[str, JSON] = {
    "id": {
        "name": "id",
        "in": "path",
        "required": True,
        "description": "The client's id as GET /clients lists it, URL-encoded ('unix#1' is "
        "'unix%231').",
        "schema": {"type": "string"},
    },
}

_NULLABLE_STRING: JSON = {"type": "string", "nullable": True}

#: The schemas every document has.
_SCHEMAS: dict[str, JSON] = {"Error": simpleObject(error="string")}


def document(role: str, routes: Iterable[tuple[str, str, bool, Doc]], tokenRequired: bool) -> JSON:
    """
    The OpenAPI 3.0 document of the admin API of a C{"server"} or
    C{"client"}, from its routes: C{(method, path, public, doc)} each.
    """
    protected = {"401": error("No valid bearer token.")} if tokenRequired else {}
    paths: dict[str, JSON] = {}
    schemas = dict(_SCHEMAS)
    for method, path, public, doc in routes:
        item = paths.setdefault(path, {})
        names = re.findall(r"\{(\w+)\}", path)
        if names:
            item["parameters"] = [PATH_PARAMETERS[name] for name in names]
        operation: JSON = {"operationId": doc.operationId, "summary": doc.summary}
        if doc.parameters:
            operation["parameters"] = list(doc.parameters)
        if doc.requestBody is not None:
            operation["requestBody"] = doc.requestBody
        operation["responses"] = {**doc.responses, **({} if public else protected)}
        if public:
            operation["security"] = []
        item[method.lower()] = operation
        for name, schema in doc.schemas.items():
            if schemas.setdefault(name, schema) != schema:
                raise ValueError(f"two routes give the schema {name!r} differently")
    result: JSON = {
        "openapi": "3.0.3",
        "info": {
            "title": f"tcpcomm {role} admin API",
            "version": __version__,
            "description": "Errors are JSON objects with an 'error' message.",
        },
        "paths": paths,
        "components": {"schemas": schemas},
    }
    if tokenRequired:
        result["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        result["security"] = [{"bearer": []}]
    return result


# The schemas of what the routes answer, for the routes' Docs.

CLIENT_SCHEMA: JSON = allRequired(
    {
        "id": {"type": "string"},
        "peer": {"type": "string"},
        "tlsSubject": _NULLABLE_STRING,
        "connectedSince": {"type": "string", "format": "date-time"},
        "lastMessage": {**_NULLABLE_STRING, "format": "date-time"},
        # null for a client of another node of the fleet (--backplane).
        "messagesIn": {"type": "integer", "nullable": True, "minimum": 0},
        "messagesOut": {"type": "integer", "nullable": True, "minimum": 0},
        "bytesIn": {"type": "integer", "nullable": True, "minimum": 0},
        "bytesOut": {"type": "integer", "nullable": True, "minimum": 0},
    }
)
#: With --backplane: the node that holds the client.
CLIENT_SCHEMA["properties"]["node"] = {"type": "string"}

STATUS_SCHEMA: JSON = allRequired(
    {
        "connected": {"type": "boolean"},
        "server": {"type": "string"},
        "since": {**_NULLABLE_STRING, "format": "date-time"},
        "connections": {"type": "integer", "minimum": 0},
        "reconnects": {"type": "integer", "minimum": 0},
        "failedAttempts": {"type": "integer", "minimum": 0},
        "lastError": _NULLABLE_STRING,
        "messagesIn": {"type": "integer", "minimum": 0},
        "messagesOut": {"type": "integer", "minimum": 0},
    }
)

#: A drain under way (C{POST /drain}, and C{/healthz} while draining).
DRAIN_STATE: JSON = {
    "periodSeconds": {"type": "number", "minimum": 0},
    "clients": {"type": "integer", "minimum": 0, "description": "Open when the drain began."},
    "closed": {"type": "integer", "minimum": 0, "description": "Closed by the drain so far."},
    "remaining": {"type": "integer", "minimum": 0, "description": "Still connected."},
    "secondsLeft": {"type": "number", "minimum": 0},
}

DRAIN_SCHEMA: JSON = allRequired(
    {
        "draining": {"type": "boolean", "enum": [True]},
        "already": {"type": "boolean", "description": "A drain was under way before this call."},
        **DRAIN_STATE,
    }
)

HEALTHZ_SCHEMA: JSON = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["ok", "draining", "degraded"]},
        "drain": {"description": "While draining: how far it is.", **allRequired(DRAIN_STATE)},
        "backplane": {
            "description": "With --backplane: its state; degraded says why.",
            "type": "object",
            "properties": {
                "state": {"type": "string", "enum": ["up", "degraded"]},
                "reason": {"type": "string"},
                "redis": {"type": "string"},
                "node": {"type": "string"},
            },
            "required": ["state", "redis", "node"],
        },
        "lastReload": {
            "description": "The last load of the settings: the start, or the last SIGHUP reload.",
            **allRequired(
                {
                    "time": {"type": "string", "format": "date-time"},
                    "ok": {"type": "boolean"},
                    "error": _NULLABLE_STRING,
                }
            ),
        },
    },
    "required": ["status"],
}
