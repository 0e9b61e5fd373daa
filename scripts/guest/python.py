"""A lean python3.11 runtime for the guest, from Debian's packages.

What goes in: the interpreter, the shared libraries it and the kept extension modules need (found
through their ELF DT_NEEDED entries, so nothing is guessed), and the standard library compiled to
sourceless, hash-based .pyc files (optimize=2: no docstrings or asserts) without the parts an
agent never imports (tests, IDLE, tkinter, pydoc data, ensurepip, ...). Compiling happens with the
packaged interpreter itself and PYTHONHASHSEED=0, so equal inputs give equal bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from collections.abc import Iterable
from pathlib import Path

from scripts.guest.common import BuildError
from scripts.guest.cpio import Tree

PY = "python3.11"
PACKAGES = (
    "python3.11-minimal",
    "libpython3.11-minimal",
    "libpython3.11-stdlib",
    "libc6",
    "zlib1g",
    "libexpat1",
)
STDLIB = f"usr/lib/{PY}"
# Top-level stdlib entries the agent and a simple workload never import.
DROP = frozenset(
    {"test", "idlelib", "tkinter", "turtledemo", "turtle.py", "pydoc_data", "pydoc.py",
     "ensurepip", "lib2to3", "distutils", "venv", "sqlite3", "dbm", "curses", "unittest",
     "config-3.11-x86_64-linux-gnu", "site-packages", "dist-packages", "xmlrpc", "__phello__",
     "doctest.py", "pdb.py", "_pydecimal.py", "mailbox.py", "imaplib.py", "nntplib.py",
     "ftplib.py", "smtplib.py", "tabnanny.py",
     # Reached only through optional or platform-specific imports (modulefinder follows those),
     # or useless without an extension module the image leaves out (_ssl, _lzma, _bz2, _ctypes).
     "multiprocessing", "xml", "ctypes", "ssl.py", "bdb.py", "cmd.py", "code.py", "codeop.py",
     "webbrowser.py", "plistlib.py", "csv.py", "difflib.py", "statistics.py",
     "fractions.py", "decimal.py", "lzma.py", "bz2.py", "tty.py", "getpass.py", "netrc.py",
     "_aix_support.py", "_osx_support.py", "_py_abc.py", "_bootsubprocess.py"}
)  # fmt: skip
# Codecs kept: what start-up, sockets (idna), HTTP (latin-1) and JSON (utf-8 family) use.
ENCODINGS = frozenset(
    {"__init__", "aliases", "ascii", "latin_1", "utf_8", "utf_8_sig", "utf_16", "utf_16_le",
     "utf_16_be", "utf_32", "utf_32_le", "utf_32_be", "idna", "punycode", "charmap",
     "raw_unicode_escape", "unicode_escape", "cp1252", "iso8859_15"}
)  # fmt: skip
# Extension modules that are not built into Debian's interpreter and need only libc.
DYNLOAD = ("_asyncio", "_contextvars", "_json", "_queue", "_typing", "mmap", "resource", "termios")
LIB_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu")

# Always kept, though no import statement names them: interpreter start-up, `python3 -m`,
# codec lookup by name, tracebacks with source lines, and asyncio's submodules.
ALWAYS = frozenset(
    {"site", "_sitebuiltins", "os", "runpy", "encodings", "sysconfig", "traceback", "linecache",
     "tokenize", "asyncio", "importlib", "collections", "json", "logging", "concurrent", "http",
     "email", "urllib", "stringprep", "_sysconfigdata__x86_64-linux-gnu",
     "_sysconfigdata__linux_x86_64-linux-gnu"}
)  # fmt: skip

FINDER_HELPER = """
import json, modulefinder, sys
job = json.load(sys.stdin)
finder = modulefinder.ModuleFinder(path=job["path"])
for script in job["scripts"]:
    finder.run_script(script)
print(json.dumps(sorted(finder.modules)))
"""

COMPILE_HELPER = """
import importlib.util, json, sys
from importlib._bootstrap_external import _code_to_hash_pyc
for src, shown, dst in json.load(sys.stdin):
    data = open(src, "rb").read()
    code = compile(data, shown, "exec", dont_inherit=True, optimize=2)
    pyc = _code_to_hash_pyc(code, importlib.util.source_hash(data), checked=False)
    open(dst, "wb").write(pyc)
"""


def elf_dynamic(data: bytes) -> tuple[list[str], str | None]:
    """DT_NEEDED sonames and the PT_INTERP path of a little-endian ELF64 file."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise BuildError("not a little-endian ELF64 file")
    phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 0x36)
    interp = None
    for i in range(phnum):
        p_type, _flags, offset, _va, _pa, filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize
        )
        if p_type == 3:  # PT_INTERP
            interp = data[offset : offset + filesz].rstrip(b"\0").decode()
    needed: list[str] = []
    for i in range(shnum):
        _name, sh_type, _f, _a, offset, size, link = struct.unpack_from(
            "<IIQQQQI", data, shoff + i * shentsize
        )
        if sh_type != 6:  # SHT_DYNAMIC
            continue
        str_off = struct.unpack_from("<Q", data, shoff + link * shentsize + 0x18)[0]
        for pos in range(offset, offset + size, 16):
            tag, value = struct.unpack_from("<qQ", data, pos)
            if tag == 0:
                break
            if tag == 1:  # DT_NEEDED
                end = data.index(b"\0", str_off + value)
                needed.append(data[str_off + value : end].decode())
    return needed, interp


def _real(root: Path, path: Path) -> Path:
    """Follow symlinks inside an unpacked package (absolute targets stay inside root)."""
    for _ in range(16):
        if not path.is_symlink():
            return path
        target = os.readlink(path)
        path = root / target.lstrip("/") if target.startswith("/") else path.parent / target
    raise BuildError(f"symlink loop at {path}")


def find_library(roots: Iterable[Path], soname: str) -> Path:
    for root in roots:
        for lib_dir in LIB_DIRS:
            candidate = root / lib_dir / soname
            if candidate.exists() or candidate.is_symlink():
                return _real(root, candidate)
    raise BuildError(f"no package provides {soname}")


def add_libraries(tree: Tree, roots: list[Path], binaries: Iterable[bytes]) -> list[str]:
    """Put the transitive DT_NEEDED closure and the ELF interpreter into the tree."""
    todo = list(binaries)
    done: set[str] = set()
    interps: set[str] = set()
    while todo:
        needed, interp = elf_dynamic(todo.pop())
        if interp:
            interps.add(interp)
        for soname in needed:
            if soname in done:
                continue
            done.add(soname)
            data = find_library(roots, soname).read_bytes()
            tree.file(f"lib/x86_64-linux-gnu/{soname}", data, 0o755)
            todo.append(data)
    for interp in sorted(interps):
        data = find_library(roots, Path(interp).name).read_bytes()
        tree.file(interp.lstrip("/"), data, 0o755)
    return sorted(done | interps)


def stage(roots: list[Path], dest: Path) -> Path:
    """One merged usr/ of the interpreter packages (they split the stdlib), rebuilt afresh."""
    shutil.rmtree(dest, ignore_errors=True)
    for root in roots:
        for sub in ("usr/bin", STDLIB):
            if (root / sub).is_dir():
                shutil.copytree(root / sub, dest / sub, symlinks=True, dirs_exist_ok=True)
    if not (dest / "usr/bin" / PY).exists() or not (dest / STDLIB / "os.py").exists():
        raise BuildError("the python packages did not provide an interpreter and os.py")
    return dest


def compile_tree(python: Path, sources: list[tuple[Path, str]], out: Path) -> dict[str, bytes]:
    """Compile (source, path-in-guest) pairs with the guest's interpreter; path -> .pyc bytes."""
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(str(src), shown, str(out / f"{i}.pyc")) for i, (src, shown) in enumerate(sources)]
    env = {"PYTHONHASHSEED": "0", "PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}
    proc = subprocess.run(
        [str(python), "-I", "-S", "-c", COMPILE_HELPER],
        input=json.dumps(jobs), capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise BuildError(f"compiling the standard library failed: {proc.stderr[-2000:]}")
    result = {shown: Path(dst).read_bytes() for _src, shown, dst in jobs}
    shutil.rmtree(out, ignore_errors=True)
    return result


def imported_toplevel(python: Path, scripts: list[Path], path: list[Path]) -> set[str]:
    """Top-level modules the scripts import, transitively (modulefinder, run by the guest's
    interpreter over the staged stdlib, so the answer is the guest's)."""
    job = {"scripts": [str(s) for s in scripts], "path": [str(p) for p in path]}
    proc = subprocess.run(
        [str(python), "-I", "-S", "-c", FINDER_HELPER],
        input=json.dumps(job), capture_output=True, text=True, check=False,
        env={"PYTHONHASHSEED": "0", "PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
    )  # fmt: skip
    if proc.returncode != 0:
        raise BuildError(f"finding the imported modules failed: {proc.stderr[-2000:]}")
    return {name.split(".")[0] for name in json.loads(proc.stdout)}


def stdlib_sources(stdlib: Path, keep: set[str] | None = None) -> list[tuple[Path, str]]:
    """The kept .py files of the staged stdlib with their paths in the guest, sorted.

    keep names top-level modules or packages (a package is kept whole); None keeps everything
    that DROP does not name.
    """
    kept: list[tuple[Path, str]] = []
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if rel.parts[0] in DROP or not {"__pycache__", "test", "tests"}.isdisjoint(rel.parts):
            continue
        if keep is not None and rel.parts[0].removesuffix(".py") not in keep | ALWAYS:
            continue
        if rel.parts[0] == "encodings" and rel.stem not in ENCODINGS:
            continue
        kept.append((path, f"/{STDLIB}/{rel.as_posix()}"))
    return kept


def add_python(
    tree: Tree, roots: list[Path], work: Path, scripts: list[Path], path: list[Path]
) -> dict[str, object]:
    """Interpreter, libraries and the part of the stdlib that scripts (found on path) import,
    compiled; returns facts for the metadata."""
    staged = stage(roots, work / "pystage")
    python = staged / "usr/bin" / PY
    tree.file(f"usr/bin/{PY}", python.read_bytes(), 0o755)
    tree.symlink("usr/bin/python3", PY)
    dynload = []
    for name in DYNLOAD:
        found = sorted((staged / STDLIB / "lib-dynload").glob(f"{name}.cpython-*.so"))
        if len(found) != 1:
            raise BuildError(f"extension module {name} not found in the python packages")
        dynload.append(found[0])
        tree.file(f"{STDLIB}/lib-dynload/{found[0].name}", found[0].read_bytes(), 0o644)
    libs = add_libraries(tree, roots, [python.read_bytes(), *(p.read_bytes() for p in dynload)])
    stdlib = staged / STDLIB
    keep = imported_toplevel(python, scripts, [*path, stdlib, stdlib / "lib-dynload"])
    compiled = compile_tree(python, stdlib_sources(stdlib, keep), work / "pyc")
    for shown, pyc in compiled.items():
        tree.file(shown.lstrip("/")[:-3] + ".pyc", pyc)
    return {"python_libraries": libs, "python_modules": len(compiled)}


def compile_package(python: Path, package: Path, dest: str, work: Path) -> dict[str, bytes]:
    """A pure-Python package compiled like the stdlib: guest path (.pyc) -> bytes."""
    sources = [(p, f"/{dest}/{p.relative_to(package.parent).as_posix()}") for p in
               sorted(package.rglob("*.py")) if "__pycache__" not in p.parts]  # fmt: skip
    compiled = compile_tree(python, sources, work / "pyc-pkg")
    return {shown.lstrip("/")[:-3] + ".pyc": pyc for shown, pyc in compiled.items()}
