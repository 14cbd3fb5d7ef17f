"""Your-own-model examples: each folder is a config plus the factory modules it names.

Run from the repository root (see examples/README.md), so that ``examples.<name>.<module>``
imports as ``model.factory: "examples.<name>.model:<function>"`` names it.
"""
