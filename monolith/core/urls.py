"""URL patterns of the site-wide views."""

from __future__ import annotations

from starlette.routing import Route

from monolith.core import views

urlpatterns = [
    Route("/healthz", views.healthz, methods=["GET"], name="healthz"),
    Route("/api/events/stock", views.stock_events, methods=["GET"], name="stock-events"),
    Route("/api/uploads", views.upload, methods=["POST"], name="upload"),
]
