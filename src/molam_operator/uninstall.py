"""``molam-analytics delete-pipelines``: delete AnalyticsPipelines while the operator still runs.

The chart runs it as a ``pre-delete`` hook. A pipeline carries the operator's finalizer (Kopf
adds one to every object with a daemon, so that it can stop the daemon first), and
``helm uninstall`` would otherwise delete the operator together with the pipeline: nobody
would then remove the finalizer, and the pipeline and its children would stay for good.

Each pipeline is deleted in the foreground, so it is gone only once its children (and their
pods) are. If the operator does not let a pipeline go within ``--timeout`` seconds (it is not
running, say), the command removes the operator's finalizer itself, says so, and waits
``--grace`` seconds more for the garbage collector. Exit 0 when every pipeline is gone.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from typing import Any

from molam_operator.kube import Kube, KubeError, path
from molam_operator.settings import GROUP, VERSION
from molam_operator.startup import FINALIZER

log = logging.getLogger(__name__)
API_VERSION = f"{GROUP}/{VERSION}"
POLL_SECONDS = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--namespace", required=True, help="namespace of the pipelines")
    parser.add_argument(
        "-l", "--selector", default="", help="label selector of the pipelines (default: all)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the operator to release them (default: %(default)s)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=60.0,
        help="seconds to wait after removing a finalizer by hand (default: %(default)s)",
    )


async def _pipelines(kube: Kube, namespace: str, selector: str) -> list[dict[str, Any]]:
    return list(
        await kube.list(
            path(API_VERSION, "AnalyticsPipeline", namespace), label_selector=selector or None
        )
    )


async def _wait_gone(kube: Kube, namespace: str, selector: str, seconds: float) -> list[str]:
    """Names still present after ``seconds`` (empty: all gone)."""
    deadline = time.monotonic() + seconds
    while True:
        left = [p["metadata"]["name"] for p in await _pipelines(kube, namespace, selector)]
        if not left or time.monotonic() >= deadline:
            return left
        await asyncio.sleep(POLL_SECONDS)


async def _release(kube: Kube, namespace: str, name: str) -> None:
    """Remove the operator's finalizer (only ours; the resourceVersion guards the list)."""
    url = path(API_VERSION, "AnalyticsPipeline", namespace, name)
    for _ in range(5):
        obj = await kube.get(url)
        if obj is None:
            return
        meta = obj["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if FINALIZER not in finalizers:
            return
        kept = [f for f in finalizers if f != FINALIZER]
        try:
            await kube.patch(
                url,
                {"metadata": {"finalizers": kept, "resourceVersion": meta["resourceVersion"]}},
            )
            log.warning(
                "%s/%s: the operator did not release it; removed %s", namespace, name, FINALIZER
            )
            return
        except KubeError as exc:
            if exc.status not in (404, 409):
                raise


async def delete_pipelines(
    kube: Kube, namespace: str, selector: str, *, timeout: float, grace: float
) -> list[str]:
    """Delete the pipelines and wait; returns the names of those that are still there."""
    for p in await _pipelines(kube, namespace, selector):
        name = p["metadata"]["name"]
        try:
            await kube.request(
                "DELETE",
                path(API_VERSION, "AnalyticsPipeline", namespace, name),
                body={"propagationPolicy": "Foreground"},
            )
            log.info("%s/%s: deleted; waiting for the operator and its children", namespace, name)
        except KubeError as exc:
            if exc.status != 404:
                raise
    left = await _wait_gone(kube, namespace, selector, timeout)
    if not left:
        return []
    for name in left:
        await _release(kube, namespace, name)
    return await _wait_gone(kube, namespace, selector, grace)


async def run(args: argparse.Namespace) -> int:
    kube = Kube.connect()
    try:
        left = await delete_pipelines(
            kube, args.namespace, args.selector, timeout=args.timeout, grace=args.grace
        )
    finally:
        await kube.close()
    if left:
        log.error("%s: still present: %s", args.namespace, ", ".join(left))
        return 1
    log.info("%s: no pipeline left", args.namespace)
    return 0
