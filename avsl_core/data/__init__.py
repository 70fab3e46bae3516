"""Data: manifests, the AVScenes benchmark (assets, fetch, composer, splits), real-dataset adapters."""
