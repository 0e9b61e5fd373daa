"""Errors of image pulls and rootfs builds, each under one of the model's stable codes.

The subclasses only name the failure for callers and tests; on the wire each is its base's code
(DownloadFailed, NotFound, InvalidArgument, Unavailable, InternalError), so no front-end needs to
learn a new one.
"""

from __future__ import annotations

from volant.model import DownloadFailed, InternalError, InvalidArgument, NotFound, Unavailable


class RegistryUnreachable(DownloadFailed):
    """The registry did not answer: refused connection, unknown host, timeout, bad TLS."""


class RegistryDenied(DownloadFailed):
    """The registry refused the credentials, or wanted some and got none."""


class ImageNotFound(NotFound):
    """No such image: unknown repository or tag, or a missing local layout or archive."""


class ImageCorrupt(DownloadFailed):
    """A blob did not match its digest, or a layer is not a readable tar."""


class UnsupportedImage(InvalidArgument):
    """A well-formed image Volant cannot run: another OS or architecture, an unknown format."""


class UnsafeImage(InvalidArgument):
    """A layer would write outside the image root (`..` names, writes through symbolic links)."""


class NoSpace(Unavailable):
    """A file system filled up during a pull or a build."""


class ToolFailed(InternalError):
    """skopeo, umoci or mkfs.erofs failed in a way none of the classes above describes."""
