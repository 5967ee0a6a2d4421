"""cryoinverse: cryo-EM and cryo-ET inverse problems with learned priors, as plugins.

Conventions (obeyed by every module): volumes are float32 tensors (z, y, x), voxel size in
Angstrom, origin (z, y, x) in Angstrom; FFTs are orthonormal and uncentred with radial shells
r = round(|k| n) (`cryoinverse.fourier`); flow time t = 0 is noise and t = 1 is data
(`cryoinverse.flow`); rotations are 3x3 matrices acting on (x, y, z) column vectors, x' = R x.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cryoinverse")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

from .errors import CryoinverseError, DataError, RegistryError, SpecError
from .mrc import read_volume, write_volume
from .volume import Volume

__all__ = [
    "__version__",
    "CryoinverseError",
    "DataError",
    "RegistryError",
    "SpecError",
    "Volume",
    "read_volume",
    "write_volume",
]
