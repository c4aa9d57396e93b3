"""The control API's routers, one per topic; each module has `router(controller) -> APIRouter`."""
