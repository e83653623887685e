"""Write synthetic smallholder scenes, the same files per scene as the real ``naip-fields`` data.

    python jobs/make_synthetic.py OUT_DIR [--count N] [--seed S] [--size-px 1024] [--crs EPSG:32648]

Scene i is ``synth_<S + i>``, made with seed S + i (see :mod:`magseg_ray.scenes.synthetic`).
Scenes whose four files already exist are skipped, so a stopped run resumes where it left off.
Prints one line per scene; exit status 2 on bad parameters.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from magseg_ray.errors import MagsegError, bad_input_exit
from magseg_ray.scenes.synthetic import SyntheticConfig, write_scenes


def _parser() -> argparse.ArgumentParser:
    d = SyntheticConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path, help="folder to write the scenes to (created if missing)")
    p.add_argument("--count", type=int, default=1, help="number of scenes (default: %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the first scene (default: %(default)s)")
    p.add_argument("--size-px", type=int, default=d.size_px, help="scene size, px (default: %(default)s)")
    p.add_argument("--crs", default=d.crs, help="projected CRS of the scenes (default: %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the job; return the exit status (0, or 2 on a user error)."""
    args = _parser().parse_args(argv)
    try:
        config = SyntheticConfig(seed=args.seed, size_px=args.size_px, crs=args.crs)
        for i, (scene_id, written) in enumerate(write_scenes(args.out_dir, args.count, config), start=1):
            print(f"[{i}/{args.count}] {scene_id}: {'written' if written else 'exists, skipped'}", flush=True)
    except MagsegError as e:
        return bad_input_exit(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
