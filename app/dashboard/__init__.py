"""The dashboard: `GET /` serves one page, and its script, styles and charts come from this
package (no CDN: the service runs offline). The page holds no data; it reads the same JSON API
with the caller's key (kept in the browser), so TUNESERVE_AUTH applies to it unchanged.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"
ASSETS_PATH = "/dashboard/static"

router = APIRouter(tags=["dashboard"])


@router.get("/", include_in_schema=False)
def read_dashboard() -> FileResponse:
    """The dashboard page (datasets, jobs with live curves, models)."""
    # no-cache: the page is tiny, and a stale one after an upgrade would call the API wrongly.
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def mount(app: FastAPI) -> None:
    app.include_router(router)
    app.mount(ASSETS_PATH, StaticFiles(directory=STATIC_DIR), name="dashboard-static")
