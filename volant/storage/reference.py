"""Image references in skopeo's transport syntax, checked before any tool runs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from volant.model import InvalidArgument

DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
# A registry path: lower-case components separated by / . _ -, an optional host[:port] first.
_COMPONENT = r"[a-z0-9]+([._-]+[a-z0-9]+)*"
_NAME_RE = re.compile(rf"[A-Za-z0-9.-]+(:[0-9]+)?(/{_COMPONENT})+|{_COMPONENT}")
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


class Transport(StrEnum):
    """Where skopeo reads an image from."""

    DOCKER = "docker"
    OCI = "oci"
    OCI_ARCHIVE = "oci-archive"
    DOCKER_ARCHIVE = "docker-archive"


@dataclass(frozen=True)
class ImageRef:
    """One image: a registry name with a tag and/or digest, or a local layout or archive.

    For docker, `name` is the repository (host/path), `tag` and `digest` are optional; for the
    local transports `name` is the path and `tag` the reference inside it (may be empty).
    """

    transport: Transport
    name: str
    tag: str = ""
    digest: str = ""

    def __str__(self) -> str:
        if self.transport is Transport.DOCKER:
            text = f"docker://{self.name}"
            text += f":{self.tag}" if self.tag else ""
            return text + (f"@{self.digest}" if self.digest else "")
        return f"{self.transport}:{self.name}" + (f":{self.tag}" if self.tag else "")

    @property
    def is_remote(self) -> bool:
        return self.transport is Transport.DOCKER

    def skopeo(self) -> str:
        """The reference as skopeo takes it: a digest wins over a tag (skopeo refuses both)."""
        if self.transport is Transport.DOCKER and self.digest:
            return f"docker://{self.name}@{self.digest}"
        if self.transport is Transport.DOCKER and not self.tag:
            return f"docker://{self.name}:latest"
        return str(self)

    def pinned(self, digest: str) -> ImageRef:
        """This image pinned to a manifest digest (registries only; local sources stay as is)."""
        if self.transport is not Transport.DOCKER:
            return self
        return ImageRef(self.transport, self.name, self.tag, digest)


def parse_image_ref(text: str, *, field: str = "image") -> ImageRef:
    """Parse docker://NAME[:TAG][@sha256:HEX], oci:DIR[:TAG], oci-archive:FILE[:TAG] or
    docker-archive:FILE[:REF]. Raises InvalidArgument naming field."""
    transport_name, sep, rest = text.partition(":")
    try:
        transport = Transport(transport_name)
    except ValueError:
        transport = None
    if not sep or transport is None or not rest:
        choices = ", ".join(f"{t}:" for t in Transport)
        raise InvalidArgument(
            f"{field}: {text!r} is not an image reference; it starts with one of {choices}",
            hint="for example docker://registry.example/app:1.0 or oci:./layout:latest",
            field=field,
        )
    if any(c.isspace() or not c.isprintable() for c in rest):
        raise InvalidArgument(
            f"{field}: {text!r} contains blanks or control characters", field=field
        )
    if transport is Transport.DOCKER:
        return _parse_docker(text, rest, field)
    path, _, tag = rest.partition(":")
    if not path:
        raise InvalidArgument(f"{field}: {text!r} names no path", field=field)
    return ImageRef(transport, path, tag)


def _parse_docker(text: str, rest: str, field: str) -> ImageRef:
    if not rest.startswith("//"):
        raise InvalidArgument(
            f"{field}: {text!r}: a registry reference is docker://HOST/NAME[:TAG][@DIGEST]",
            field=field,
        )
    rest, _, digest = rest[2:].partition("@")
    if digest and not DIGEST_RE.fullmatch(digest):
        raise InvalidArgument(
            f"{field}: {digest!r} is not a digest; pin with @sha256:<64 lower-case hex digits>",
            field=field,
        )
    name, tag = rest, ""
    # The tag is after the last colon, unless that colon is a port (then a slash follows it).
    head, colon, tail = rest.rpartition(":")
    if colon and "/" not in tail:
        name, tag = head, tail
    if tag and not _TAG_RE.fullmatch(tag):
        raise InvalidArgument(f"{field}: {tag!r} is not a valid tag", field=field)
    if not _NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"{field}: {name!r} is not a repository name (host/path, lower case)", field=field
        )
    return ImageRef(Transport.DOCKER, name, tag, digest)
