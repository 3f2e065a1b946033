"""Unsupervised lung pathology on CT (DiffSegLung): a HU lung mask, a radiomic teacher, a small
pixel-space DDPM whose bottleneck is distilled towards the radiomics, multi-timestep bottleneck
features clustered by a Gaussian mixture, clusters named by HU-guided rules, Sobel edge fusion.

``LungPathologyPipeline`` is the entry point; ``medrefine lung-pathology`` the command."""

from medrefine.lungpath.labels import CLASS_NAMES, LABELS

__all__ = ["CLASS_NAMES", "LABELS", "LungPathologyPipeline", "LungPathologyResult"]


def __getattr__(name: str):  # the pipeline pulls in torch and scikit-learn: import it lazily
    if name in ("LungPathologyPipeline", "LungPathologyResult"):
        from medrefine.lungpath import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
