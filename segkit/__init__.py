"""segkit: notebook-first semantic segmentation on COCO data with mmsegmentation.

The numbered notebooks in `notebooks/` call these small modules; `python -m segkit --help`
lists the command-line entry points.
"""

__version__ = "0.1.0"
