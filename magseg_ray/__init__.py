"""magseg-ray: country-wide smallholder field mapping with decoder-free multimodal LLMs on Ray.

Data flow, one subpackage per step:
scenes -> chips -> patch prompts (``prompt``) -> model (``model``) -> mask text, R-RLE or anchored (``rle``)
-> masks (``masks``) -> stitched map -> fields; ``eval`` measures masks as the papers do.
"""

__version__ = "0.1.0"
