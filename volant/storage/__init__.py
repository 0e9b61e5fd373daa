"""Images and disks: OCI images pulled into a blob cache and built into erofs root file systems.

A sibling of store, runtime, host, network and plugins (DESIGN.md, layer 4): it imports none of
them, only model. Needs skopeo, umoci and mkfs.erofs (erofs-utils) on PATH, and root to build.
"""

from volant.storage.cache import ImageCache
from volant.storage.disks import DiskFiles, DiskSpace
from volant.storage.errors import (
    ImageCorrupt,
    ImageNotFound,
    NoSpace,
    RegistryDenied,
    RegistryUnreachable,
    ToolFailed,
    UnsafeImage,
    UnsupportedImage,
)
from volant.storage.image import Descriptor, ImageWorkload, PulledImage, Rootfs
from volant.storage.importer import ImportedImage, import_image
from volant.storage.pull import pull
from volant.storage.reference import ImageRef, Transport, parse_image_ref
from volant.storage.rootfs import build_erofs, cached_rootfs
from volant.storage.skopeo import Access

__all__ = [
    "Access",
    "Descriptor",
    "DiskFiles",
    "DiskSpace",
    "ImageCache",
    "ImageCorrupt",
    "ImageNotFound",
    "ImageRef",
    "ImageWorkload",
    "ImportedImage",
    "NoSpace",
    "PulledImage",
    "RegistryDenied",
    "RegistryUnreachable",
    "Rootfs",
    "ToolFailed",
    "Transport",
    "UnsafeImage",
    "UnsupportedImage",
    "build_erofs",
    "cached_rootfs",
    "import_image",
    "parse_image_ref",
    "pull",
]
