"""Reference worlds: self-contained, offline data and models to benchmark protections in.

``synthfaces`` generates procedural cartoon identities (pretraining images with captions, and
held-out identities laid out as evaluation concepts). Submodules are imported on use, so that
``python -m continual_ldu.reference.synthfaces`` runs without importing itself twice.
"""
