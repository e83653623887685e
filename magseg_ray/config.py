"""Command lines from typed configs: every dataclass field becomes a flag, its ``help`` the doc.

Jobs declare their settings once, as a frozen dataclass whose fields carry
``field(metadata={"help": ...})``; :func:`add_arguments` turns that into argparse flags
(``--field-name``) and :func:`from_arguments` back into the dataclass, so a config in code and a
command line cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import field


DTYPES = ("auto", "float32", "bfloat16", "float16")
"""``--dtype`` choices of every job that loads a model (see :func:`dtype_field`)."""
TRAIN_DTYPES = ("auto", "float32", "bfloat16")
"""``--dtype`` choices of the training jobs (float16 would need loss scaling, which is not set up)."""


def dtype_field(choices: tuple[str, ...] = DTYPES):
    """The ``dtype`` field of a job's config (its ``--dtype``), one of ``choices``."""
    return field(default="auto", metadata=doc(
        "weights' dtype: auto (bfloat16 on a GPU that has it, else float32: CPU kernels are slow and coarse "
        "in bfloat16) or a dtype; bfloat16 halves memory (Gemma3 4B: about 8.6 GB)", choices=list(choices)))


def doc(text: str, **extra) -> dict:
    """Field metadata: ``field(default=..., metadata=doc("what it is", choices=[...]))``; ``help``
    becomes the flag's help, other keys go to ``add_argument``."""
    return {"help": text, **extra}


def _scalar_type(tp):
    """The scalar type of a field annotation (``int | None`` -> ``int``)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def add_arguments(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """Add a ``--flag`` for every field of the dataclass ``cls`` (but those named in ``skip``: the
    job defines them itself)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = _scalar_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_text = f"{f.metadata.get('help', '')} (default: {default})".replace("%", "%%")  # argparse formats help
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=tp, default=default, help=help_text,
                                choices=f.metadata.get("choices"))


def from_arguments(cls, args: argparse.Namespace):
    """The dataclass ``cls`` built from parsed arguments (extra attributes are ignored)."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})
