"""Which methods a path answers, said the way RFC 9110 asks: `OPTIONS` on any route is a 204
whose `Allow` lists every method of the path, and a 405 lists them all too (Starlette's own
405 names only the methods of the first route that matched the path, one of several)."""

from __future__ import annotations

from collections.abc import Sequence

from starlette.routing import BaseRoute, Match, Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The methods a route may declare; OPTIONS is answered here for every path that has routes.
_METHODS = ("DELETE", "GET", "HEAD", "PATCH", "POST", "PUT")


def allowed_methods(routes: Sequence[BaseRoute], scope: Scope) -> list[str]:
    """Every method some route serves at this path (HEAD wherever GET is), plus OPTIONS; asked
    of each route as the router asks it (a full match), so included routers count too. A mount
    (the dashboard's static files) matches any method and says nothing about them."""
    methods = {method for method in _METHODS for route in routes if not isinstance(route, Mount)
               and route.matches({**scope, "method": method})[0] == Match.FULL}
    return sorted(methods | {"OPTIONS"}) if methods else []


class MethodsAllowed:
    """Pure ASGI: answers OPTIONS itself and rewrites the `Allow` of every 405."""

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.routes = routes  # the app's own list: routes added later are seen too

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "OPTIONS" and (methods := allowed_methods(self.routes, scope)):
            await send({"type": "http.response.start", "status": 204,
                        "headers": [(b"allow", ", ".join(methods).encode()), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b""})
            return

        async def send_with_allow(message: Message) -> None:
            # Matched only for a 405: other requests (/predict's many) pay nothing here.
            if message["type"] == "http.response.start" and message["status"] == 405 and (
                    methods := allowed_methods(self.routes, scope)):
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"allow"]
                message = {**message, "headers": [*headers, (b"allow", ", ".join(methods).encode())]}
            await send(message)

        await self.app(scope, receive, send_with_allow)
