"""The public path of the three interfaces; they live in ``attrimp.model.interfaces``."""

from attrimp.model.interfaces import *  # noqa: F403
from attrimp.model.interfaces import __all__  # noqa: F401
