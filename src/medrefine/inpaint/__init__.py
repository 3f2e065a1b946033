"""X-ray inpainting: a small conditional diffusion model fills a masked region (ribs, devices,
any region) from the pixels around it. ``InpaintingPipeline`` is the entry point."""
