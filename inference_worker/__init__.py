"""The inference worker: from a received MR study to findings (issue #3, in progress).

What exists so far: series selection (:mod:`inference_worker.selection`) and DICOM series to
3D volumes with their geometry (:mod:`inference_worker.volume`).
"""
