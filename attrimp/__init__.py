"""attrimp: which semantic attributes does a person re-identification model rely on?

The package root stays light (no torch import) so that `attrimp --help` and the studies layer
start fast; import the submodules you need.
"""

__version__ = "0.1.0"

from attrimp.errors import AttrimpError  # noqa: E402

__all__ = ["AttrimpError", "__version__"]
