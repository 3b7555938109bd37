"""The HTTP side of the command-line client: one httpx client, the key header, errors in words.

Imports nothing of the service (no SQL, no torch), so `tuneserve jobs list` starts fast and runs
on a laptop against a remote server.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from httpx_sse import ServerSentEvent, connect_sse

DEFAULT_URL = "http://127.0.0.1:8000"
# Uploads of large files and a first /predict that loads a model take a while; a stream has no
# read timeout at all (it is quiet between events, apart from the server's keep-alive comments).
TIMEOUT_S = 300.0


class ApiError(Exception):
    """A refusal by the server (status and its detail) or no answer at all (status 0)."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status, self.detail = status, detail


def detail_text(detail: Any) -> str:
    """FastAPI's 422 detail is a list of {loc, msg}; say each as `field: message`."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", []) if p not in ("body", "query"))
                parts.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    if isinstance(detail, dict):
        return "; ".join(f"{k}: {v}" for k, v in detail.items())
    return str(detail)


class Api:
    def __init__(self, url: str = DEFAULT_URL, api_key: str | None = None,
                 http: Any = None) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # `http`: an httpx.Client or anything with its interface (Starlette's TestClient).
        self.http: httpx.Client = http or httpx.Client(base_url=self.url, timeout=TIMEOUT_S)
        self.http.headers.update(headers)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._no_answer(exc) from exc
        if resp.status_code >= 400:
            raise self._error(method, path, resp)
        return resp

    def _no_answer(self, exc: Exception) -> ApiError:
        return ApiError(0, f"no answer from {self.url} ({type(exc).__name__}: {exc}). Is the server "
                           "running (`tuneserve up`)? Point at another one with --url or TUNESERVE_URL.")

    def _error(self, method: str, path: str, resp: httpx.Response) -> ApiError:
        try:
            detail = detail_text(resp.json().get("detail"))
        except ValueError:
            detail = resp.text[:500] or resp.reason_phrase
        if resp.status_code == 405 or (resp.status_code == 404 and detail == "Not Found"):
            # The route itself is missing: an older server.
            detail = f"this server has no {method} {path.split('?')[0]} (an older tuneserve?)"
        if resp.status_code == 401 and "key" not in detail.lower():
            detail += " (pass --api-key or set TUNESERVE_API_KEY)"
        return ApiError(resp.status_code, detail)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs).json()

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs).json()

    def delete(self, path: str, params: dict[str, Any] | None = None) -> None:
        self.request("DELETE", path, params=params)

    @contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A response to read as it arrives (`iter_bytes`); a refusal raises ApiError with the
        server's detail, and so do no answer at all and a transfer that breaks off."""
        answered = False
        try:
            with self.http.stream(method, path, **kwargs) as resp:
                answered = True
                if resp.status_code >= 400:
                    resp.read()
                    raise self._error(method, path, resp)
                yield resp
        except httpx.TransportError as exc:
            if not answered:
                raise self._no_answer(exc) from exc
            what = "the download" if method == "GET" else f"the answer to {method} {path.split('?')[0]}"
            raise ApiError(0, f"{what} from {self.url} broke off ({exc})") from exc

    def download(self, path: str, destination: Any, params: dict[str, Any] | None = None) -> int:
        """Stream a file to `destination` (an open binary file); returns the bytes written."""
        written = 0
        with self.stream("GET", path, params=params) as resp:
            for chunk in resp.iter_bytes():
                destination.write(chunk)
                written += len(chunk)
        return written

    def post_events(self, path: str, body: dict[str, Any]) -> Iterator[ServerSentEvent]:
        """A POST answered with Server-Sent Events (POST /generate with stream=true)."""
        timeout = httpx.Timeout(TIMEOUT_S, read=None)
        try:
            with connect_sse(self.http, "POST", path, json=body, timeout=timeout) as source:
                if source.response.status_code >= 400:
                    source.response.read()
                    raise self._error("POST", path, source.response)
                yield from source.iter_sse()
        except httpx.TransportError as exc:
            raise ApiError(0, f"no answer from {self.url} ({type(exc).__name__}: {exc})") from exc

    def events(self, job_id: str, last_event_id: str | None = None) -> Iterator[ServerSentEvent]:
        """The job's live stream (GET /jobs/{id}/events/stream) from after `last_event_id`."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        timeout = httpx.Timeout(TIMEOUT_S, read=None)
        with connect_sse(self.http, "GET", f"/jobs/{job_id}/events/stream", headers=headers,
                         timeout=timeout) as source:
            if source.response.status_code >= 400:
                source.response.read()
                raise self._error("GET", f"/jobs/{job_id}/events/stream", source.response)
            yield from source.iter_sse()
