"""Joining or starting Ray: one rule for the Ray search engine and the Ray extraction."""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


def start_ray(ray_address: str | None) -> bool:
    """Join the cluster at ``ray_address``, reuse a running Ray, or start a local one; True if we started it.

    The caller that started (or connected) calls ``ray.shutdown()`` at the end; a Ray that was
    already running in this process is left as it was.
    """
    import ray

    if ray.is_initialized():
        logger.info("using the Ray instance this process already runs")
        return False
    if ray_address:
        ray.init(address=ray_address)
        return True  # we connected: disconnect at the end (the cluster keeps running)
    ray.init(address="local", num_cpus=os.cpu_count() or 1, include_dashboard=False, _node_ip_address="127.0.0.1")
    return True
