"""
/openapi.json is made from the route table: every route served is
described, with its path parameters, its body and its token, and a route
added to a table appears in the document with nothing else to edit.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from tcpcomm.client import ClientStatus
from tcpcomm.control.admin import AdminResource, Outgoing, Route, makeAdminSite
from tcpcomm.control.metrics import makeRegistry
from tcpcomm.control.openapi import Doc, jsonResponse, simpleObject

from .support import makeHub


def resourceOf(role: str, token: str | None = None) -> AdminResource:
    """
    The admin resource of a server (with its dashboard) or of a client.
    """
    clock = Clock()
    hub = makeHub(clock)
    status = None if role == "server" else ClientStatus("127.0.0.1:9527")
    site = makeAdminSite(
        hub, makeRegistry(hub), Outgoing("utf-8", "line", 32), clock, token, status, b"<html>"
    )
    return site.resource


def served(resource: AdminResource) -> dict[str, Any]:
    """
    The document as C{GET /openapi.json} serves it.
    """
    request: Any = DummyRequest([b"openapi.json"])
    request.path = b"/openapi.json"
    if resource.token is not None:
        request.requestHeaders.addRawHeader(b"authorization", b"Bearer " + resource.token.encode())
    body = resource.render(request)
    assert isinstance(body, bytes)
    result: dict[str, Any] = json.loads(body)
    return result


class DocumentTests(SynchronousTestCase):
    """
    The document describes exactly the routes of the table.
    """

    def test_everyRoute(self) -> None:
        """Each (method, path) of a server's and a client's table is in the document, and nothing else."""
        for role in ("server", "client"):
            resource = resourceOf(role)
            spec = served(resource)
            described = {
                (method.upper(), path)
                for path, item in spec["paths"].items()
                for method in item
                if method != "parameters"
            }
            self.assertEqual(described, set(resource.table), role)
            self.assertEqual(spec["info"]["title"], f"tcpcomm {role} admin API")

    def test_pathParameters(self) -> None:
        """A path with {id} declares the id parameter once, on the path."""
        spec = served(resourceOf("server"))
        for path in ("/clients/{id}", "/clients/{id}/messages", "/clients/{id}/disconnect"):
            [parameter] = spec["paths"][path]["parameters"]
            self.assertEqual((parameter["name"], parameter["in"]), ("id", "path"))
        self.assertNotIn("parameters", spec["paths"]["/clients"])

    def test_bodies(self) -> None:
        """The routes that take a body (Route.body) are those that document one."""
        resource = resourceOf("server")
        spec = served(resource)
        for (method, path), route in resource.table.items():
            operation = spec["paths"][path][method.lower()]
            self.assertEqual("requestBody" in operation, route.body, path)

    def test_token(self) -> None:
        """With a token, every route but the public ones documents the 401 and the bearer scheme."""
        resource = resourceOf("server", "correct-horse")
        spec = served(resource)
        self.assertEqual(spec["security"], [{"bearer": []}])
        for (method, path), route in resource.table.items():
            operation = spec["paths"][path][method.lower()]
            self.assertEqual("401" in operation["responses"], not route.public, path)
            self.assertEqual(operation.get("security") == [], route.public, path)
        self.assertNotIn("security", served(resourceOf("server")))

    def test_tokenReloaded(self) -> None:
        """A token set by a reload shows in the document at once: it is made from the table per request."""
        resource = resourceOf("server")
        self.assertNotIn("401", served(resource)["paths"]["/clients"]["get"]["responses"])
        resource.setToken("new-token")
        self.assertIn("401", served(resource)["paths"]["/clients"]["get"]["responses"])

    def test_schemasUsed(self) -> None:
        """Each document holds the schemas its routes refer to: Client on a server, Status on a client."""
        self.assertIn("Client", served(resourceOf("server"))["components"]["schemas"])
        self.assertIn("Status", served(resourceOf("client"))["components"]["schemas"])

    def test_addedRoute(self) -> None:
        """A route added to a table is served and described with no other edit."""
        doc = Doc(
            "listThings",
            "Every thing.",
            {"200": jsonResponse("The things.", simpleObject(count="integer"))},
            parameters=[{"name": "limit", "in": "query", "schema": {"type": "integer"}}],
        )
        routes = {("GET", "/things"): Route(lambda request, params: (200, {"count": 3}), doc)}
        resource = AdminResource(routes, makeRegistry(makeHub(Clock())), "server", None, 32)
        operation = served(resource)["paths"]["/things"]["get"]
        self.assertEqual(operation["operationId"], "listThings")
        self.assertEqual(operation["parameters"][0]["name"], "limit")
        request: Any = DummyRequest([b"things"])
        request.path = b"/things"
        body = resource.render(request)
        assert isinstance(body, bytes)
        self.assertEqual(json.loads(body), {"count": 3})
