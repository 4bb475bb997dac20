"""URL patterns of the catalog app."""

from __future__ import annotations

from starlette.routing import Route

from monolith.catalog import views

urlpatterns = [
    Route("/api/products", views.product_list, methods=["GET"], name="product-list"),
    Route("/api/products", views.product_create, methods=["POST"], name="product-create"),
    Route("/api/products/{id:int}", views.product_detail, methods=["GET"], name="product-detail"),
    Route("/api/products/{id:int}", views.product_update, methods=["PUT", "PATCH"], name="product-update"),
    Route("/api/products/{id:int}", views.product_delete, methods=["DELETE"], name="product-delete"),
    Route("/api/categories", views.category_list, methods=["GET"], name="category-list"),
    Route("/", views.product_list_page, methods=["GET"], name="home"),
    Route("/products/{id:int}", views.product_detail_page, methods=["GET"], name="product-page"),
]
