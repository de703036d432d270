"""3D cell shapes: spherical-harmonic prior (3a), multiview model (3b), NeuS volumes (3c)."""
