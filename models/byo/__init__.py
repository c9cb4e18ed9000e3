"""Bring your own model: what a site's own 2D classifier or detector needs to plug in by
manifest, unchanged (``models/MODEL_CARD.md``, "Bring your own model").

- :mod:`models.byo.pictures`: a picture as the model's input (resize, channels, layout, the
  named preprocessing conventions).
- :mod:`models.byo.slice_model`: one interface over Keras, PyTorch and ONNX models: outputs
  turned into probabilities as the manifest declares, and Grad-CAM at the last convolutional
  layer (found inside nested base models too).
- :mod:`models.byo.check`: the start-up check: one dummy input through the model and Grad-CAM.
- :mod:`models.byo.inspect`: what ``neurogate models add`` infers from a model file.
- :mod:`models.byo.architectures`: the architectures a PyTorch state dict may declare.
"""
