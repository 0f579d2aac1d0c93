"""Classical restorers behind the same registry: no training, no parameters.

They are the bar every learned model must clear, measured on the same validation images in every search
(``imgrestore.tuning.baselines``). Each returns the classically inpainted gray as RGB (neutral chroma): on the
competition's metric a wrong colour costs more than no colour (see docs/benchmarks.md).

    input_copy     the damaged input, its flat fill kept (the floor)
    telea          OpenCV ``cv2.inpaint`` INPAINT_TELEA (fast marching)
    navier_stokes  OpenCV ``cv2.inpaint`` INPAINT_NS
    fsr            OpenCV contrib ``cv2.xphoto.inpaint`` FSR_FAST (frequency-selective reconstruction)
    fsr_biharmonic the mean of FSR's fill and scikit-image's ``inpaint_biharmonic`` (see ``models.prefill``)
"""

from __future__ import annotations

from .base import Restorer
from .registry import register_model

CLASSICAL = {"input_copy": "none", "telea": "telea", "navier_stokes": "ns", "fsr": "fsr",
             "fsr_biharmonic": "fsr_biharmonic"}


class ClassicalRestorer(Restorer):
    """A prefill and nothing else: ``Restorer.forward`` without a network returns the prefilled gray as RGB."""

    def __init__(self, method: str, prefill_radius: int = 5):
        super().__init__(prefill=method, prefill_radius=prefill_radius, chroma="none")
        self.config = {"prefill_radius": int(prefill_radius)}  # the method is the registered name


def _factory(method: str):
    def build(prefill_radius: int = 5) -> ClassicalRestorer:
        return ClassicalRestorer(method, prefill_radius)
    return build


for _name, _method in CLASSICAL.items():
    register_model(_factory(_method), name=_name)
