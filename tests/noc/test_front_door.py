"""The site's root leads to the NOC dashboard, not to a 404."""

from __future__ import annotations

from django.test import Client


def test_the_root_url_redirects_to_the_noc_dashboard(client: Client):
    response = client.get("/")

    assert response.status_code == 302
    assert response["Location"] == "/noc/"
