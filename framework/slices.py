"""Central slices of maps as PNG images: `cryoinverse.previews`, under the name earlier code imports."""

from .previews import *  # noqa: F403
from .previews import __all__  # noqa: F401
