"""Layer 2: CLIP loading (open_clip), the dense/decoupled forward, VFM and SD teachers, conversion."""
