"""napari contributions: the only part of cellsynth that imports napari or Qt.

Every module here is thin: it unpacks layers into arrays, calls the core, and turns the core's
results back into layers. Nothing here is imported when ``cellsynth`` is imported.
"""
