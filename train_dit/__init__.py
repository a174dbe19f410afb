"""Text-to-image Diffusion Transformer trainer (the DiT family, ``trainer=dit``): not built yet (the DiT issue)."""
