"""alerts.delivery.post_once: every failure is an outcome, never an exception."""

from __future__ import annotations

import httpx

from molam_workloads.alerts.delivery import post_once


async def test_an_unparseable_url_is_a_failed_outcome() -> None:
    """httpx refuses a URL with a control character before any connection (InvalidURL, which
    is not an HTTPError): it must not escape and stop the notifier's task."""
    url = "http://hooks.example/a\x04b?token=s3cr3t"
    async with httpx.AsyncClient() as client:
        outcome = await post_once(client, url, b"{}", {}, 1.0)
    assert not outcome.ok and outcome.status_code is None
    assert outcome.error is not None and outcome.error.startswith("invalid URL")
    assert outcome.destination == "hooks.example" and "s3cr3t" not in outcome.error
