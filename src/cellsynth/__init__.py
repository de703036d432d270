"""cellsynth: learn cells from a few annotations, synthesize annotated microscopy data.

The core (everything outside ``cellsynth._widgets``) never imports napari or Qt, so the
command line and cluster installs work headless. Import submodules directly, e.g.
``from cellsynth import io, metrics``.
"""

__version__ = "0.1.0"

from cellsynth.errors import CellsynthInputError

__all__ = ["CellsynthInputError", "__version__"]
