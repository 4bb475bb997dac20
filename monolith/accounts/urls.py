"""URL patterns of the accounts app."""

from __future__ import annotations

from starlette.routing import Route

from monolith.accounts import views

urlpatterns = [
    Route("/accounts/login", views.login_form, methods=["GET"], name="login-form"),
    Route("/accounts/login", views.login, methods=["POST"], name="login"),
    Route("/accounts/logout", views.logout, methods=["POST"], name="logout"),
    Route("/accounts/api/whoami", views.whoami, methods=["GET"], name="whoami"),
]
