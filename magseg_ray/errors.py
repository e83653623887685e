"""One exception hierarchy for everything a user can get wrong.

Every error a job shows a user derives from :class:`MagsegError`, names the input at fault and
says what is wrong with it. Jobs catch ``MagsegError`` at the top and exit with
:func:`bad_input_exit` (one ``error: ...`` line on stderr, no traceback, status :data:`BAD_INPUT`);
anything else is a bug in magseg-ray.
"""

import sys

BAD_INPUT = 2
"""Exit status of a job that refused its input."""


def bad_input_exit(error: Exception | str) -> int:
    """Print ``error`` on stderr as a job's one-line refusal; the job's exit status, :data:`BAD_INPUT`."""
    print(f"error: {error}", file=sys.stderr)
    return BAD_INPUT


class MagsegError(Exception):
    """Base class of every user-facing magseg-ray error."""


class ConfigError(MagsegError, ValueError):
    """A configuration value is out of range or inconsistent with another one."""


class ModelLoadError(MagsegError):
    """A model directory is missing, unreadable, or not of the kind the job needs (a Gemma3
    image-text-to-text checkpoint for mapping; a grounder, CLIP or SAM folder for GeoSeg)."""


class ChipError(MagsegError, ValueError):
    """An image chip or a patch box is malformed (dtype, band count, shape, box outside the chip)."""


class MaskTextError(MagsegError, ValueError):
    """Mask text (R-RLE or anchored) is malformed (raised only by the strict decoders)."""


class SchemaError(MagsegError, ValueError):
    """An unknown label schema, or labels that do not fit the schema."""


class RasterInputError(MagsegError):
    """A raster or vector input is missing, unreadable, lacks a CRS, or does not overlap its partner."""


class ClusterError(MagsegError):
    """A Ray cluster cannot be started or joined at the given address."""


class SceneError(MagsegError):
    """A scene or scene root is missing, unreadable, corrupt, or of an unsupported kind (dtype, no CRS)."""


class TileRequestError(MagsegError, ValueError):
    """A tile server request is malformed or out of range (a map tile's z/x/y, a ``/segment`` body's
    bbox), or too coarse or too large for per-patch inference."""


class RequestTooLargeError(TileRequestError):
    """A request body larger than the server takes (HTTP 413)."""


class NotCoveredError(MagsegError):
    """A requested place (a map tile, a ``/segment`` area) lies outside every catalogued scene."""


class NotEnabledError(MagsegError):
    """A request needs a part the server was started without (``/segment`` on ``--no-geoseg``)."""


class QueryError(MagsegError, ValueError):
    """A GeoSeg query is empty, or longer than the grounding model's context."""


class OutputError(MagsegError):
    """A run's output cannot be written (disk full, no permission, object store unreachable): the
    message names the file and the cause, and how to resume once the cause is gone."""
