"""A verified, content-addressed cache of plugin boot artifacts.

Layout under root (`<state_dir>/artifacts`):

    sha256/<hex>    an artifact whose sha256 is <hex>, read-only; it entered only after its bytes
                    were hashed and matched the manifest's checksum
    combined/<hex>  two initramfs archives back to back; <hex> is the sha256 of their digests
    tmp/            downloads and copies in progress, renamed into place once verified

Because a name is the digest of the content, a cached file never needs re-checking, and every
write is a rename so a reader never sees half a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
import stat
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urljoin, urlsplit

from volant.model import Artifact, InvalidArgument, disk_full_as_error
from volant.plugins.fetch import check_url, display_url, fetch_to_file

log = logging.getLogger(__name__)

CHECKSUM = re.compile(r"^sha256:([0-9a-f]{64})$")
_HEX = re.compile(r"^[0-9a-f]{64}$")
READ_ONLY = 0o444
COPY_CHUNK = 1024 * 1024
MEMO_ENTRIES = 256
# Linux unpacks each cpio archive of a concatenated initramfs from a 4-byte aligned offset.
CPIO_ALIGN = 4

Source = str | Path  # an http(s) URL to fetch, or a host file to copy


@dataclass
class _Gate:
    """One in-flight key's lock and how many callers hold or wait for it (mutable, internal)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0


class ArtifactCache:
    """Boot artifacts fetched or copied once, verified by sha256, and kept by digest."""

    def __init__(self, root: Path, *, max_bytes: int, timeout: float) -> None:
        """root is `<state_dir>/artifacts`; max_bytes and timeout bound each download or copy."""
        self.root = root
        self.max_bytes = max_bytes
        self.timeout = timeout
        self._gates: dict[str, _Gate] = {}
        self._memo: OrderedDict[tuple[str, int, int, int], str] = OrderedDict()

    def digest_path(self, checksum: str) -> Path:
        """Where the artifact with this "sha256:<hex>" checksum is (or would be) cached."""
        return self.root / "sha256" / _hex_of(checksum, "checksum")

    async def ensure(self, artifact: Artifact, *, base: str = "", field: str = "initramfs") -> Path:
        """The cached, verified copy of artifact, fetching or copying it on first use.

        base is where the manifest came from (an http(s) URL, a file: URL or an absolute path of
        the manifest file); relative references resolve against it. field names the manifest key
        in error messages. A checksum mismatch is InvalidArgument and caches nothing.
        """
        final = self.root / "sha256" / _hex_of(artifact.checksum, f"{field}.checksum")
        if await asyncio.to_thread(final.is_file):
            return final
        source = resolve(artifact, base=base, field=field)
        with disk_full_as_error(self.root, f"cannot cache {field} {_shown(source)}"):
            await self._fill(final, source, artifact.checksum, field)
        return final

    async def concatenated(self, first: Path, second: Path) -> Path:
        """An initramfs that is first followed by second, cached under combined/.

        first is zero-padded to a 4-byte boundary so the kernel finds second's cpio header.
        """
        digests = (await self.file_digest(first), await self.file_digest(second))
        final = self._combined_path(digests)
        if await asyncio.to_thread(final.is_file):
            return final
        with disk_full_as_error(self.root, "cannot cache the combined initramfs"):
            return await self._combine(final, first, second, digests)

    async def _fill(self, final: Path, source: Source, checksum: str, field: str) -> None:
        async with self._exclusive(f"sha256:{final.name}"):
            # Another caller may have finished the same artifact while this one waited.
            if await asyncio.to_thread(final.is_file):
                return
            staging = await self._staging(final.name)
            try:
                actual = await self._obtain(source, staging, field)
                if actual != checksum:
                    raise InvalidArgument(
                        f"{field}.checksum: checksum mismatch for {_shown(source)}: expected "
                        f"{checksum}, got {actual}",
                        field=f"{field}.checksum",
                    )
                await asyncio.to_thread(_seal, staging, final)
            except BaseException:
                await asyncio.shield(asyncio.to_thread(staging.unlink, missing_ok=True))
                raise
        log.info("cached %s %s from %s", field, checksum, _shown(source))

    async def _combine(
        self, final: Path, first: Path, second: Path, digests: tuple[str, str]
    ) -> Path:
        async with self._exclusive(f"combined:{final.name}"):
            if await asyncio.to_thread(final.is_file):
                return final
            staging = await self._staging(f"combined-{final.name}")
            try:
                copied = await asyncio.to_thread(_concatenate, first, second, staging)
                if copied != digests:
                    # A file changed under an unchanged size and mtime, so the memo was stale:
                    # file what was actually written under its own name.
                    self._forget(first, second)
                    final = self._combined_path(copied)
                await asyncio.to_thread(_seal, staging, final)
            except BaseException:
                await asyncio.shield(asyncio.to_thread(staging.unlink, missing_ok=True))
                raise
        return final

    async def file_digest(self, path: Path) -> str:
        """ "sha256:<hex>" of a file, memoised by (path, inode, size, mtime): a repeat is a stat.

        OSError (a missing or unreadable file) propagates: callers pass their own host files.
        """
        st = await asyncio.to_thread(os.stat, path)
        key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
        digest = self._memo.get(key)
        if digest is None:
            if path.parent == self.root / "sha256" and _HEX.match(path.name):
                digest = "sha256:" + path.name  # verified on entry and read-only since
            else:
                digest = await asyncio.to_thread(_hash_file, path)
            self._memo[key] = digest
            if len(self._memo) > MEMO_ENTRIES:
                self._memo.popitem(last=False)
        return digest

    async def prune(self, keep: set[str]) -> int:
        """Remove cached artifacts whose checksum is not in keep, and every combined file.

        keep holds "sha256:<hex>" checksums (bare hex is accepted too) and must name every
        artifact a VM may boot from. Entries being written right now are left alone. Returns how
        many cached files were removed (leftover temporary files are cleaned but not counted).
        """
        wanted = {k.removeprefix("sha256:") for k in keep}
        busy = set(self._gates)
        return await asyncio.to_thread(_prune, self.root, wanted, busy)

    def _combined_path(self, digests: tuple[str, str]) -> Path:
        key = hashlib.sha256((digests[0] + digests[1]).encode("ascii")).hexdigest()
        return self.root / "combined" / key

    def _forget(self, *paths: Path) -> None:
        names = {str(p) for p in paths}
        for key in [k for k in self._memo if k[0] in names]:
            del self._memo[key]

    async def _staging(self, stem: str) -> Path:
        await asyncio.to_thread(_make_dirs, self.root)
        return self.root / "tmp" / f"{stem}.{secrets.token_hex(6)}"

    async def _obtain(self, source: Source, staging: Path, field: str) -> str:
        if isinstance(source, Path):
            return await asyncio.to_thread(
                _copy_hashing, source, staging, self.max_bytes, f"{field}.path"
            )
        return await fetch_to_file(
            source, staging, max_bytes=self.max_bytes, timeout=self.timeout, field=f"{field}.url"
        )

    @contextlib.asynccontextmanager
    async def _exclusive(self, key: str) -> AsyncIterator[None]:
        # One lock per digest, dropped when nobody holds or waits for it, so the table does not
        # grow with every artifact ever seen.
        gate = self._gates.setdefault(key, _Gate())
        gate.users += 1
        try:
            async with gate.lock:
                yield
        finally:
            gate.users -= 1
            if gate.users == 0:
                del self._gates[key]


def resolve(artifact: Artifact, *, base: str, field: str) -> Source:
    """Where to get an artifact: an http(s) URL to fetch, or a host file to copy.

    An absolute path is a host file. A relative path, or a URL without a scheme, resolves against
    base: against an http(s) base it becomes a URL, against a file base a host file.
    """
    if bool(artifact.url) == bool(artifact.path):
        raise InvalidArgument(f"{field}: needs exactly one of url or path", field=field)
    if artifact.url:
        key, ref = f"{field}.url", artifact.url
        if urlsplit(ref).scheme:
            check_url(ref, field=key)
            return ref
    else:
        key, ref = f"{field}.path", artifact.path
        if "\x00" in ref:
            raise InvalidArgument(f"{key}: must not contain NUL characters", field=key)
        if ref.startswith("/"):
            if urlsplit(base).scheme in ("http", "https"):
                # A manifest from the network must not pick files off this host.
                raise InvalidArgument(
                    f"{key}: a manifest fetched over http(s) may not name a host file; "
                    "use a relative path or a URL",
                    field=key,
                )
            return Path(ref)
        ref = quote(ref)  # a path, so '?', '#' and '%' are file name characters, not URL syntax
    joined = urljoin(_base_url(base, key), ref)
    parts = urlsplit(joined)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    check_url(joined, field=key)
    return joined


def _base_url(base: str, key: str) -> str:
    if not base:
        raise InvalidArgument(
            f"{key}: relative artifact path needs the manifest's location", field=key
        )
    if base.startswith("/"):
        return Path(base).as_uri()
    parts = urlsplit(base)
    if parts.scheme in ("http", "https") or (
        parts.scheme == "file" and parts.netloc in ("", "localhost")
    ):
        return base
    raise InvalidArgument(
        f"{key}: cannot resolve a relative reference against {display_url(base)}; the manifest's "
        "location must be an http(s) URL, a file: URL or an absolute path",
        field=key,
    )


def _hex_of(checksum: str, key: str) -> str:
    match = CHECKSUM.match(checksum)
    if match is None:
        what = (
            "is required"
            if not checksum
            else f"must be 'sha256:' and 64 hex digits, got {checksum!r}"
        )
        raise InvalidArgument(f"{key}: {what}", field=key)
    return match.group(1)


def _shown(source: Source) -> str:
    return str(source) if isinstance(source, Path) else display_url(source)


def _make_dirs(root: Path) -> None:
    for sub in ("sha256", "combined", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)


def _copy_hashing(src: Path, dest: Path, max_bytes: int, key: str) -> str:
    """Copy a regular host file to dest, hashing it; return "sha256:<hex>" of what was copied."""
    try:
        # O_NONBLOCK: opening a FIFO named by a manifest must not hang until a writer appears.
        fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise InvalidArgument(f"{key}: {src} does not exist", field=key) from exc
    except OSError as exc:
        raise InvalidArgument(f"{key}: cannot read {src}: {exc.strerror}", field=key) from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InvalidArgument(f"{key}: {src} is not a regular file", field=key)
    hasher = hashlib.sha256()
    with os.fdopen(fd, "rb") as inp:
        copied = 0
        with dest.open("xb") as out:
            while chunk := inp.read(COPY_CHUNK):
                copied += len(chunk)
                if copied > max_bytes:
                    raise InvalidArgument(
                        f"{key}: {src} is larger than {max_bytes} bytes", field=key
                    )
                hasher.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    return "sha256:" + hasher.hexdigest()


def _hash_file(path: Path) -> str:
    with path.open("rb") as inp:
        return "sha256:" + hashlib.file_digest(inp, "sha256").hexdigest()


def _concatenate(first: Path, second: Path, dest: Path) -> tuple[str, str]:
    """Write first, zero padding to a 4-byte boundary, then second; return their digests."""
    digests: list[str] = []
    with dest.open("xb") as out:
        for part in (first, second):
            hasher = hashlib.sha256()
            with part.open("rb") as inp:
                while chunk := inp.read(COPY_CHUNK):
                    hasher.update(chunk)
                    out.write(chunk)
            digests.append("sha256:" + hasher.hexdigest())
            if len(digests) == 1:
                out.write(b"\0" * (-out.tell() % CPIO_ALIGN))
        out.flush()
        os.fsync(out.fileno())
    return digests[0], digests[1]


def _seal(staging: Path, final: Path) -> None:
    """Make staging read-only and rename it onto final, durably."""
    staging.chmod(READ_ONLY)
    os.replace(staging, final)
    dir_fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _prune(root: Path, wanted: set[str], busy: set[str]) -> int:
    removed = 0
    for kind, keep in (("sha256", wanted), ("combined", set[str]())):
        folder = root / kind
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            if entry.name in keep or f"{kind}:{entry.name}" in busy:
                continue
            entry.unlink(missing_ok=True)
            removed += 1
    tmp = root / "tmp"
    if not busy and tmp.is_dir():
        # Nothing is being written, so whatever is here was left by a crash.
        for entry in tmp.iterdir():
            entry.unlink(missing_ok=True)
    return removed
