"""URL patterns of the orders app."""

from __future__ import annotations

from starlette.routing import Route

from monolith.orders import views

urlpatterns = [
    Route("/api/orders", views.order_create, methods=["POST"], name="order-create"),
    Route("/api/orders", views.order_list, methods=["GET"], name="order-list"),
    Route("/orders/new", views.order_form_post, methods=["POST"], name="order-new"),
    Route("/orders", views.order_list_page, methods=["GET"], name="orders-page"),
]
