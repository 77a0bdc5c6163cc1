"""Kubernetes facts shared by the tests that drive the local cluster."""

from __future__ import annotations

# `kubectl annotate namespace NAME <this>`: every pod of the namespace gets a node selector that
# no node matches (the apiserver's PodNodeSelector admission plugin), so it stays Pending. For
# tests of the operator's objects, which need no running pods, on a stack that has a node.
NO_PODS = "scheduler.alpha.kubernetes.io/node-selector=molam.io/no-pods=true"
