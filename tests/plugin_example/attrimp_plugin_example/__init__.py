"""An example attrimp plug-in package: one module per kind of extension point.

Each module holds one plug-in, and ``pyproject.toml`` declares each with one entry-point line;
attrimp itself never names any of them.
"""
