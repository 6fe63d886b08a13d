"""aspo: reinforcement learning with verifiable rewards, built around ASPO.

Importing the package is cheap: submodules (``aspo.objectives``, ``aspo.trainer``, ...) pull in torch or
transformers only when they are imported themselves.
"""

__version__ = "0.1.0"
