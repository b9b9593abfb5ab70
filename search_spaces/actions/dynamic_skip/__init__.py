"""``dynamic_skip``: an LSTM controller decides per input whether a residual block runs.

One folder holds the whole action: :mod:`.handler` (the config and the registry's handler),
:mod:`.model` (the gated model and its controller), :mod:`.training` (the controller's
training inside a build) and :mod:`.onnx` (the export with each gate an ONNX ``If``).
"""

from __future__ import annotations

from search_spaces.actions.dynamic_skip.handler import DynamicSkipConfig, DynamicSkipHandler
from search_spaces.actions.dynamic_skip.model import DynamicSkipModel, find_dynamic

__all__ = ["DynamicSkipConfig", "DynamicSkipHandler", "DynamicSkipModel", "find_dynamic"]
