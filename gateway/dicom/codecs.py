"""Pixel codecs on first use: keep numpy and pydicom's codec plugins out of a byte-moving server.

Why: `import pydicom` imports numpy whenever it is installed (the `codecs` extra) and registers
its codec plugins, whose packages (pylibjpeg with libjpeg/openjpeg/rle, pyjpegls, gdcm) import
numpy's C API on import; it also imports requests, only to download its own test files. That
is about 23 MB of resident memory, a third of an idle gateway, although C-STORE, STOW-RS and
WADO-RS of stored bytes never decode a pixel.

`defer()`, called by `dicom-gateway serve` before anything imports pydicom, imports pydicom with
numpy and requests as stand-ins (`sys.modules` entries that import the real module the first
time one of their attributes is used) and with the codec plugin packages hidden, so pydicom
registers those plugins as missing. `require()`, called before every pixel decode
(gateway/dicom/transcode.py, pixels.py, render.py), loads numpy, re-imports pydicom's plugin
modules and registers every plugin again in pydicom's own order, through pydicom's public
`remove_plugin`/`add_plugin`: from then on pydicom is exactly as a plain import leaves it.

Without `defer()` (tests, library use) `require()` does nothing. `DICOM_GATEWAY_LAZY_CODECS=0`
switches the deferral off (see docs/operations.md).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import sys
import threading
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gateway.exceptions import GatewayError

log = logging.getLogger(__name__)

ENVIRONMENT = "DICOM_GATEWAY_LAZY_CODECS"

# Imported by pydicom at import time, used only inside its functions.
_STAND_INS = ("numpy", "requests")
# Probed while pydicom registers its codec plugins; each imports numpy's C API when imported.
_HIDDEN = ("pylibjpeg", "openjpeg", "libjpeg", "rle", "jpeg_ls", "gdcm")
_PLUGIN_BASE = "pydicom.pixels.common"  # defines CoderBase.add_plugin

_swap_lock = threading.Lock()  # stand-in -> real module; nothing is imported under it
_require_lock = threading.Lock()
_stand_ins: dict[str, types.ModuleType] = {}
_real: dict[str, types.ModuleType] = {}  # a stand-in's module, once imported
# (coder, [(label, (module, function)), ...]) as pydicom registered them; None: nothing held.
_held: list[tuple[Any, list[tuple[str, tuple[str, str]]]]] | None = None
_plugin_modules: list[str] = []


def defer() -> bool:
    """Import pydicom with numpy deferred and the codec plugins held back; True if done.

    Does nothing (False) if pydicom is already imported, numpy is not installed, or
    DICOM_GATEWAY_LAZY_CODECS=0.
    """
    global _held
    if os.environ.get(ENVIRONMENT, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if "pydicom" in sys.modules or "numpy" in sys.modules:
        return False
    if importlib.util.find_spec("numpy") is None:
        return False  # no codecs extra: pydicom imports lean by itself
    pydicom_spec = importlib.util.find_spec("pydicom")
    if pydicom_spec is None or pydicom_spec.origin is None:
        return False
    if not (Path(pydicom_spec.origin).parent / "pixels" / "common.py").is_file():
        log.warning("pixel codecs load at start: this pydicom has no pixels/common.py")
        return False
    for name in _STAND_INS:
        spec = importlib.util.find_spec(name) if name not in sys.modules else None
        if spec is not None:
            stand_in = _StandIn(name)
            # What the import system and tools read without meaning to use the module.
            stand_in.__spec__ = spec
            stand_in.__loader__ = spec.loader
            stand_in.__file__ = spec.origin
            stand_in.__package__ = spec.parent
            _stand_ins[name] = stand_in
            sys.modules[name] = stand_in
    sys.meta_path.insert(0, _SideLoaded())
    hidden = [name for name in _HIDDEN if name not in sys.modules]
    registrations: list[tuple[Any, str, tuple[str, str]]] = []
    recorder = _PluginRecorder(registrations)
    sys.meta_path.insert(0, recorder)
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # "not installed", for now
    try:
        import pydicom  # noqa: F401
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
        sys.meta_path.remove(recorder)
        recorder.restore()
    if not recorder.recorded:
        raise GatewayError(
            "pydicom registered its pixel codecs in a way gateway/dicom/codecs.py does not "
            f"know; set {ENVIRONMENT}=0 to load them at start"
        )
    by_coder: dict[int, tuple[Any, list[tuple[str, tuple[str, str]]]]] = {}
    for coder, label, path in registrations:
        by_coder.setdefault(id(coder), (coder, []))[1].append((label, path))
    _held = list(by_coder.values())
    _plugin_modules[:] = sorted({path[0] for _coder, _label, path in registrations})
    log.debug("pixel codecs deferred until first decode")
    return True


def require() -> None:
    """Make pixel decoding work: load what `defer()` held back (once; thread-safe)."""
    global _held
    if _held is None:
        return
    with _require_lock:
        if _held is None:
            return
        if "numpy" in _stand_ins:
            _load("numpy")  # before any numpy submodule is imported by a plugin
        import pydicom.config

        # Modules that probed the hidden packages at import: import them again, now found.
        handlers = getattr(pydicom.config, "pixel_data_handlers", ())  # the legacy backend
        for name in [*_plugin_modules, *(handler.__name__ for handler in handlers)]:
            module = sys.modules.get(name)
            if module is not None:
                importlib.reload(module)
        for coder, plugins in _held:
            for label, _path in plugins:
                coder.remove_plugin(label)
            coder.add_plugins(plugins)
        _held = None
        log.info("pixel codecs loaded")


def deferred() -> bool:
    """True while codecs are held back (`defer()` ran, `require()` not yet)."""
    return _held is not None


class _StandIn(types.ModuleType):
    """Stands in `sys.modules` for a module until one of its attributes is first used.

    Modules that imported the stand-in (pydicom's `np`) keep it: every attribute they read
    from it is forwarded to the real module.
    """

    def __getattr__(self, attribute: str) -> Any:
        name = self.__name__
        return getattr(_real.get(name) or _load(name), attribute)


def _load(name: str) -> types.ModuleType:
    stand_in = _stand_ins[name]
    with _swap_lock:
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
    # Outside the lock: the import system's own per-module lock makes a second thread wait.
    module = importlib.import_module(name)
    _real[name] = module
    return module


class _SideLoaded(importlib.abc.MetaPathFinder):
    """Keeps a stand-in's submodules from being executed twice.

    `import numpy.linalg` while `numpy` is a stand-in reads the stand-in's `__path__`, which
    imports the real numpy, which imports numpy.linalg itself; the import system, past its own
    "already imported?" check, would then execute numpy.linalg a second time. This finder
    hands it the module that is already there instead.
    """

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] not in _stand_ins or "." not in fullname:
            return None
        existing = sys.modules.get(fullname)
        if existing is None:
            return None
        return importlib.util.spec_from_loader(fullname, _Existing(existing))


class _Existing(importlib.abc.Loader):
    def __init__(self, module: types.ModuleType) -> None:
        self._module = module
        self._spec = module.__spec__

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return self._module

    def exec_module(self, module: types.ModuleType) -> None:
        module.__spec__ = self._spec  # the import system set ours; give back the real one


class _PluginRecorder(importlib.abc.MetaPathFinder):
    """Records pydicom's plugin registrations (coder, label, import path) while it imports.

    They are replayed by `require()`: the only way to restore each coder's plugin order, which
    decides which plugin decodes when several are installed.
    """

    def __init__(self, registrations: list[tuple[Any, str, tuple[str, str]]]) -> None:
        self._registrations = registrations
        self._undo: list[tuple[Any, str, Any]] = []  # (object, attribute, original value)
        self._loader: Any = None
        self.recorded = False

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != _PLUGIN_BASE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        self._loader = spec.loader
        self._undo.append((spec, "loader", spec.loader))
        spec.loader = _AfterExec(spec.loader, self._patch)
        return spec

    def _patch(self, module: types.ModuleType) -> None:
        coder_base = module.CoderBase
        original = coder_base.add_plugin
        registrations = self._registrations

        def add_plugin(coder: Any, label: str, import_path: tuple[str, str]) -> None:
            registrations.append((coder, label, (import_path[0], import_path[1])))
            original(coder, label, import_path)

        self._undo.append((module, "__loader__", self._loader))
        self._undo.append((coder_base, "add_plugin", original))
        coder_base.add_plugin = add_plugin
        self.recorded = True

    def restore(self) -> None:
        """Leave pydicom as it would be without us: its own add_plugin, its own loader."""
        while self._undo:
            target, attribute, value = self._undo.pop()
            setattr(target, attribute, value)


class _AfterExec(importlib.abc.Loader):
    def __init__(self, loader: Any, then: Any) -> None:
        self._loader = loader
        self._then = then

    def __getattr__(self, name: str) -> Any:
        return getattr(self._loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        module: types.ModuleType | None = self._loader.create_module(spec)
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        self._loader.exec_module(module)
        self._then(module)
