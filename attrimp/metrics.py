"""The public path of the ReID metrics; they live in ``attrimp.evaluate.metrics``."""

from attrimp.evaluate.metrics import *  # noqa: F403
from attrimp.evaluate.metrics import __all__  # noqa: F401
