"""NeuroGate's REST API (FastAPI): accounts, patients, studies and analyses, uploads, and
classification of single pictures. ``python -m api`` serves it; :func:`api.app.create_app`
builds it. TensorFlow is imported only when a picture is first classified."""
