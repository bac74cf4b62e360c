"""mask2face: show the face beneath a face mask (JAX/Flax)."""
