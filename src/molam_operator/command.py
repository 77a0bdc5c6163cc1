"""``molam-analytics operator``: run the Kopf operator in this process's event loop."""

from __future__ import annotations

import argparse
import importlib
import os

import kopf


def add_arguments(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="watch this namespace (repeatable; glob patterns like 'molam-*' work)",
    )
    scope.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="watch every namespace (the default when no --namespace is given)",
    )
    parser.add_argument(
        "--liveness",
        default=os.environ.get("OPERATOR_LIVENESS", "http://0.0.0.0:8080/healthz"),
        metavar="URL",
        help="Kopf's liveness endpoint (default: %(default)s; 'none' disables it)",
    )


async def run(args: argparse.Namespace) -> int:
    # Importing registers the handlers in Kopf's default registry.
    importlib.import_module("molam_operator.main")
    liveness = None if args.liveness in ("", "none") else args.liveness
    await kopf.operator(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=liveness,
        standalone=True,
    )
    return 0
