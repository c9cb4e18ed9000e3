"""3D segmentation of brain, whole tumour, tumour core and enhancing tumour (PyTorch)."""
