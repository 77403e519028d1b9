"""fastpurify — fast, exact diffusion-based adversarial purification.

    import fastpurify
    x_pur = fastpurify.purify(x)                         # x: (B, C, H, W) in [0, 1]
    model = fastpurify.PurifiedClassifier(fastpurify.Purifier(m, "diffpure"), classifier)
"""

from ._version import __version__
from .api import PurifiedClassifier, Purifier, purify
from .presets import preset_names

__all__ = ["purify", "Purifier", "PurifiedClassifier", "available_backends", "preset_names", "load_diffusion",
           "load_classifier", "__version__"]


def available_backends() -> dict:
    """Which op backends (torch, cpu C++, triton, cuda) can run here, and why not (see `python -m fastpurify.info`)."""
    from .info import available_backends as _available

    return _available()


def load_diffusion(path, kind=None, **kwargs):
    """Load public diffusion weights (score_sde NCSN++, guided-diffusion ADM, DDPM `Model`, diffusers UNet2DModel dir)
    safely into a denoiser for `purify`/`Purifier`.  See `fastpurify.models.loaders.load_diffusion`."""
    from .models.loaders import load_diffusion as _load

    return _load(path, kind, **kwargs)


def load_classifier(path, kind=None, **kwargs):
    """Load a WRN (RobustBench / DiffPure), DM-WRN or torchvision ResNet-50 state_dict; normalisation inside.
    See `fastpurify.models.loaders.load_classifier`."""
    from .models.loaders import load_classifier as _load

    return _load(path, kind, **kwargs)


def __getattr__(name):
    # `fastpurify.zoo` and `fastpurify.models` load on first use, keeping `import fastpurify` cheap.
    if name in ("zoo", "models", "attacks"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'fastpurify' has no attribute {name!r}")
