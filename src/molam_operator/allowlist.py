"""What a custom resource may make the operator do: run its image, read the Secrets it names.

Whoever can create an AnalyticsPipeline picks ``spec.image`` (the operator runs it with the
pipeline's Secrets) and names Secrets the operator reads with its own permissions. Two optional
settings narrow that:

* ``OPERATOR_IMAGE_ALLOW``: registries or repository prefixes (``ghcr.io/molam``,
  ``registry.local:5000``, ``docker.io/library/molam-analytics``); an image outside every one
  is refused.
* ``OPERATOR_SECRET_ALLOW``: Secret names or shell-style patterns (``analytics-*``); a Secret
  outside every one is never read.

Empty (the default) allows everything, as before. Pure: no I/O, no operator imports.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass

DOCKER_HUB = "docker.io"
_HUB_ALIASES = {"index.docker.io", "registry-1.docker.io"}

# The grammar of github.com/distribution/reference (what kubelets and registries accept).
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
)
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"\w[\w.-]{0,127}")
_DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{32,}")
# A Secret name (a DNS subdomain), where an allow-list entry may also use * and ? wildcards.
_SECRET_PATTERN = re.compile(r"[a-z0-9*?]([-a-z0-9.*?]{0,251}[a-z0-9*?])?")


def _is_domain(first: str) -> bool:
    """Whether a reference's first component names a registry (distribution's own test)."""
    return "." in first or ":" in first or first == "localhost" or first != first.lower()


def _path_ok(parts: Iterable[str]) -> bool:
    return all(_PATH_COMPONENT.fullmatch(p) for p in parts)


def image_repository(image: str) -> str | None:
    """The fully qualified repository of an image reference, without tag or digest
    (``molam-analytics:1`` -> ``docker.io/library/molam-analytics``); None if it is not a
    valid reference."""
    name, at, digest = image.partition("@")
    if at and not _DIGEST.fullmatch(digest):
        return None
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:  # a tag (a colon before the last slash is a registry's port)
        name, tag = name[:colon], name[colon + 1 :]
        if not _TAG.fullmatch(tag):
            return None
    first, sep, rest = name.partition("/")
    if sep and _is_domain(first):
        domain, remote = first.lower(), rest
        if not _DOMAIN.fullmatch(domain):
            return None
    else:
        domain, remote = DOCKER_HUB, name
    if domain in _HUB_ALIASES:
        domain = DOCKER_HUB
    if domain == DOCKER_HUB and "/" not in remote:
        remote = f"library/{remote}"
    if not remote or not _path_ok(remote.split("/")):
        return None
    return f"{domain}/{remote}"


def image_prefix(entry: str) -> str:
    """An ``OPERATOR_IMAGE_ALLOW`` entry checked and normalised; ValueError says what is wrong.

    The first component is always the registry, so ``docker.io/library/nginx`` and not
    ``nginx``: a bare name would silently never match.
    """
    text = entry.strip().rstrip("/")
    first, _, rest = text.partition("/")
    if not first or not _DOMAIN.fullmatch(first) or not _is_domain(first):
        raise ValueError(
            f"image allow-list entry {entry!r}: start with a registry host "
            "(ghcr.io/org, registry.local:5000, docker.io/library/name)"
        )
    domain = DOCKER_HUB if first.lower() in _HUB_ALIASES else first.lower()
    if rest and not _path_ok(rest.split("/")):
        raise ValueError(f"image allow-list entry {entry!r}: not a repository path")
    return f"{domain}/{rest}" if rest else domain


def secret_pattern(entry: str) -> str:
    """An ``OPERATOR_SECRET_ALLOW`` entry checked: a Secret name, ``*`` and ``?`` allowed."""
    text = entry.strip()
    if not _SECRET_PATTERN.fullmatch(text):
        raise ValueError(
            f"secret allow-list entry {entry!r}: a Secret name, optionally with * or ? "
            "(analytics-*)"
        )
    return text


def split(value: str) -> list[str]:
    """A comma-separated setting's entries (blank ones dropped)."""
    return [p.strip() for p in value.split(",") if p.strip()]


@dataclass(frozen=True)
class Refusal:
    """Why a pipeline is not applied: ``reason`` is its status condition's reason."""

    reason: str
    message: str


@dataclass(frozen=True)
class AllowLists:
    """The operator's two allow-lists; an empty one allows everything."""

    images: tuple[str, ...] = ()
    secrets: tuple[str, ...] = ()

    @classmethod
    def parse(cls, images: str = "", secrets: str = "") -> AllowLists:
        """From the settings' comma-separated text; ValueError names a malformed entry."""
        return cls(
            images=tuple(image_prefix(e) for e in split(images)),
            secrets=tuple(secret_pattern(e) for e in split(secrets)),
        )

    def image_allowed(self, image: str) -> bool:
        if not self.images:
            return True
        repo = image_repository(image)
        if repo is None:  # unparseable: nothing proves which registry it would come from
            return False
        # A prefix ends at a path boundary: ghcr.io/molam allows ghcr.io/molam/x, not
        # ghcr.io/molam-evil/x.
        return any(repo == p or repo.startswith(p + "/") for p in self.images)

    def secret_allowed(self, name: str) -> bool:
        return not self.secrets or any(fnmatch.fnmatchcase(name, p) for p in self.secrets)

    def refusal(self, image: str, secrets: Iterable[str]) -> Refusal | None:
        """Why a pipeline running ``image`` with ``secrets`` must not be applied, or None."""
        if not self.image_allowed(image):
            return Refusal(
                "ImageNotAllowed",
                f"spec.image {image!r} is not from an allowed registry "
                f"(OPERATOR_IMAGE_ALLOW: {', '.join(self.images)})",
            )
        refused = sorted({s for s in secrets if not self.secret_allowed(s)})
        if refused:
            return Refusal(
                "SecretNotAllowed",
                f"the operator may not read Secret(s) {', '.join(refused)} "
                f"(OPERATOR_SECRET_ALLOW: {', '.join(self.secrets)})",
            )
        return None
