"""The committed OpenAPI document describes exactly the routes the application serves."""

from __future__ import annotations

import yaml

from api.app import OPENAPI, create_app
from config.settings import Settings


def test_every_route_is_described_and_every_description_is_a_route():
    app = create_app(Settings(environment="test"))
    # /ui/ is the admins' HTML monitoring page (session cookie), not part of the machine API.
    served = {(route.resource.canonical, route.method.lower()) for route in app.router.routes()
              if route.method != "HEAD" and route.resource is not None
              and not route.resource.canonical.startswith("/ui")}
    document = yaml.safe_load(OPENAPI.read_text())
    described = {(path, method) for path, ops in document["paths"].items() for method in ops
                 if method in {"get", "post", "put", "delete", "patch"}}
    assert served == described
