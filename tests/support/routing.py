"""A test's topics, worker and projector, with company 7's email jobs routed to one cloud provider."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from config.settings import Settings
from offload.client import change_company_settings


def start_routed_to(provider: str, settings: Settings, topics_for: Callable[[Settings], Any],
                    processes: Callable[..., Any]) -> Any:
    """Company 7's email jobs of any size to ``provider``; returns the worker once it has read that setting."""
    topics_for(settings)
    asyncio.run(change_company_settings(settings, 7, cloud_enabled=True, use_cloud_for_emails=True,
                                        user_threshold=1, email_provider=provider))
    worker = processes("worker", settings)
    worker.wait_for_log("company 7 settings", timeout=30)
    processes("projector", settings)
    return worker
