"""Networks, weights, manifests and training code, and the synthetic data they learn from."""
