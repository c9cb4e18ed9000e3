"""2D slice models (Keras): tumour detection and four-class tumour classification."""
