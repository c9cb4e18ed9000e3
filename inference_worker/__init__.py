"""The inference worker: from a received MR study to findings and result objects in the PACS.

Series selection (:mod:`inference_worker.selection`, rules in ``series_rules.toml``), DICOM
series to 3D volumes with their geometry (:mod:`inference_worker.volume`), the pipeline
(:mod:`inference_worker.pipeline`), the SEG, SR, Grad-CAM capture and PDF report
(:mod:`inference_worker.results`), the service that takes studies off the bus
(:mod:`inference_worker.service`) and the exporter that sends the results
(:mod:`inference_worker.exporter`). ``python -m inference_worker`` runs it, as
``neurogate worker`` does.
"""
