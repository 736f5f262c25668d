"""Exports of torch_clnf's patch experts and whole fit: ONNX (:mod:`export.onnx`) and Core ML
(:mod:`export.coreml`), both traced from the same torch modules (:mod:`export.modules`).

Exported files hold OpenFace-derived weights: OpenFace's license applies to them, and they are
written under the ignored ``weights/`` folder (or a path you give), never into the repository.
"""
