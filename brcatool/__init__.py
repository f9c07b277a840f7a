"""brcatool: breast-cancer subtype prediction from whole-slide images and expression.

Importing the package is cheap on purpose: heavy libraries (torch, openslide, zarr)
are imported by the stage modules that need them.
"""

__version__ = "0.1.0"
