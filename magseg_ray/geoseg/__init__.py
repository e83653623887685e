"""GeoSeg (arXiv 2603.03983): training-free, instruction-grounded segmentation of a scene.

An MLLM grounds the query to a box and a short phrase (:mod:`.grounder`, :mod:`.parsing`), the box
is widened toward the MLLMs' known bias (:mod:`.boxes`), and two routes segment inside it: CLIP
Surgery keypoints (:mod:`.clip_surgery`, :mod:`.points`) prompting a SAM, and SAM3 with the phrase
as text (:mod:`.segmenters`); :mod:`.fusion` combines them. :mod:`.pipeline` wires the injected
parts; :mod:`.fieldroute` makes the MAgSeg field model a route; :mod:`.bench` scores a folder.
"""
