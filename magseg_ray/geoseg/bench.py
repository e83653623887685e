"""``--bench``: score GeoSeg on a folder of (image, query, mask) items, every ablation side by side.

Items are read from ``items.jsonl`` (see :mod:`.templates`). A Ray Data job sends them to
:class:`BenchActor` s (one per model copy, fractional CPUs so the read tasks are not starved on
small machines): each actor loads the models once, grounds each item once (or takes the truth
box with ``box_source="truth"``: an oracle that scores the segmentation stage alone, labelled as
such), and runs every ablation (:data:`.config.ABLATIONS`) on that box. Per item and per
difficulty level (and ``all``), for each ablation: mean IoU, Dice, accuracy, precision, recall,
specificity and boundary F of the target mask, the cumulative IoU (sum of intersections over sum
of unions) and how many masks came out empty. With a judge (``judge``: a grounder-kind folder),
each ablation's mask is also scored by the MLLM judge (:mod:`.judge`), and the judge's table
(mean score per aspect over the answers that gave one, answers judged, unparsed per aspect) sits
beside the pixel metrics. Written: ``items.jsonl``, ``metrics.json`` (``levels``: pixel metrics,
``judge``: the judge's table or None), ``table.png`` and, with a judge, ``judge_table.png``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from magseg_ray.errors import ConfigError, MagsegError
from magseg_ray.geoseg.config import ABLATIONS, GeoSegConfig

METRICS = ("iou", "dice", "accuracy", "precision", "recall", "specificity", "boundary_f")
"""Per-item pixel metrics of the target (the ``field`` class of :func:`~magseg_ray.eval.metrics.pixel_metrics`)."""
PIXEL_COLUMNS = {"mIoU": "iou", "cIoU": "ciou", "Dice": "dice", "Acc": "accuracy", "Prec": "precision",
                 "Rec": "recall", "Spec": "specificity", "BF": "boundary_f", "n": "items", "empty": "empty"}
JUDGE_COLUMNS = {"Faithfulness": "faithfulness", "Localization": "localization", "Robustness": "robustness",
                 "judged": "judged", "unparsed F": "faithfulness_unparsed", "unparsed L": "localization_unparsed",
                 "unparsed R": "robustness_unparsed"}
"""Table columns (label: summary key) of the pixel metrics and of the judge."""


@dataclass(frozen=True)
class BenchConfig:
    items: str
    """Folder holding ``items.jsonl``."""
    out: str
    """Output folder."""
    ablations: list = field(default_factory=lambda: list(ABLATIONS))
    """Ablation rows to run (keys of :data:`.config.ABLATIONS`)."""
    num_actors: int = 1
    """Model actors."""
    box_source: str = "grounder"
    """``grounder``, or ``truth`` (oracle boxes: the segmentation stage alone)."""
    cpus_per_actor: float = 0.5
    """Ray CPUs per actor (fractional: leave room for the read tasks)."""
    judge: str | None = None
    """Judge checkpoint folder (any grounder kind); None: no judge table."""

    def __post_init__(self):
        unknown = [a for a in self.ablations if a not in ABLATIONS]
        if unknown:
            raise ConfigError(f"unknown ablations {unknown}; known: {', '.join(ABLATIONS)}")
        if self.box_source not in ("grounder", "truth"):
            raise ConfigError(f"box_source must be grounder or truth, not {self.box_source!r}")


def item_metrics(pred: np.ndarray, truth: np.ndarray) -> dict:
    from magseg_ray.eval.metrics import pixel_metrics

    m = pixel_metrics(pred.astype(np.uint8), truth.astype(np.uint8), "ai4sf")["field"]
    out = {k: m[k] for k in METRICS}
    out.update(intersection=int((pred & truth).sum()), union=int((pred | truth).sum()), empty=not pred.any())
    return out


def read_item(root: Path, item: dict) -> tuple[np.ndarray, np.ndarray]:
    import rasterio

    from magseg_ray.errors import SceneError

    try:
        with rasterio.open(root / item["image"]) as src:
            image = np.moveaxis(src.read([1, 2, 3]), 0, -1)
        with rasterio.open(root / item["mask"]) as src:
            truth = src.read(1) > 0
    except rasterio.errors.RasterioError as e:
        raise SceneError(f"item {item.get('id')}: {e}") from None
    return image, truth


class BenchActor:
    """Ray Data ``map`` class: an item -> its per-ablation scores (as one JSON column)."""

    def __init__(self, models, config: GeoSegConfig, bench: BenchConfig):
        from magseg_ray.geoseg.run import build_pipeline

        self.pipeline = build_pipeline(models, config)
        self.config, self.bench, self.root = config, bench, Path(bench.items)
        self.judge = None
        if bench.judge:
            from magseg_ray.geoseg.grounder import Grounder
            from magseg_ray.geoseg.loading import Placement

            placement = Placement.resolve(models.device, models.dtype)
            self.judge = Grounder.load(bench.judge, models.max_new_tokens, placement)

    def _ground(self, image, item) -> tuple[tuple | None, str, str, str]:
        """(raw box, phrase, grounder answer, reason) for one item."""
        if self.bench.box_source == "truth":
            return tuple(item["box"]), item["query"], "", ""
        g = self.pipeline.grounder(image, item["query"])
        return g.parsed.box, g.parsed.phrase or item["query"], g.text, g.parsed.reason

    def __call__(self, row: dict) -> dict:
        from magseg_ray.geoseg.judge import judge
        from magseg_ray.geoseg.pipeline import GeoSeg

        item = json.loads(row["item"])
        record = {k: item[k] for k in ("id", "query", "level")}
        try:
            image, truth = read_item(self.root, item)
            box, phrase, record["answer"], record["reason"] = self._ground(image, item)
            record["box"], record["ablations"] = box, {}
            p = self.pipeline
            for name in self.bench.ablations:
                variant = GeoSeg(p.grounder, p.points, p.text, replace(self.config, **ABLATIONS[name]))
                if box is None:
                    pred, case, seconds = np.zeros_like(truth), "none", {}
                else:
                    r = variant.segment(image, item["query"], box=box, phrase=phrase)
                    pred, case, seconds = r.mask, r.case, r.seconds
                record["ablations"][name] = {"case": case, "seconds": seconds, **item_metrics(pred, truth)}
                if self.judge is not None:
                    record["ablations"][name]["judge"] = judge(self.judge, image, truth, pred, item["query"])
        except MagsegError as e:
            record["error"] = str(e)
        return {"record": json.dumps(record, default=float)}


def _by_level(records: list[dict], name: str) -> dict[str, list[dict]]:
    """One ablation's per-item scores by level, and ``all`` (levels with no item left out)."""
    rows = [(r["level"], r["ablations"][name]) for r in records if name in r.get("ablations", {})]
    levels = {level: [m for lv, m in rows if level in ("all", lv)] for level in sorted({lv for lv, _ in rows}) + ["all"]}
    return {level: sel for level, sel in levels.items() if sel}


def summarise_judges(records: list[dict], ablations: list[str]) -> dict | None:
    """Per ablation and level (and ``all``): the judge's :func:`~.judge.summarise_judge`; None without a judge."""
    from magseg_ray.geoseg.judge import summarise_judge

    if not any("judge" in m for r in records for m in r.get("ablations", {}).values()):
        return None
    return {name: {level: summarise_judge([m["judge"] for m in sel if "judge" in m])
                   for level, sel in _by_level(records, name).items()} for name in ablations}


def summarise(records: list[dict], ablations: list[str]) -> dict:
    """Per ablation and level (and ``all``): mean of each metric, cumulative IoU, items, empty masks."""
    out = {}
    for name in ablations:
        levels = {}
        for level, sel in _by_level(records, name).items():
            means = {k: float(np.nanmean([m[k] for m in sel])) if any(not np.isnan(m[k]) for m in sel) else None
                     for k in METRICS}
            union = sum(m["union"] for m in sel)
            means.update(ciou=sum(m["intersection"] for m in sel) / union if union else None, items=len(sel),
                         empty=sum(m["empty"] for m in sel))
            levels[level] = means
        out[name] = levels
    return out


def write_table(path: Path, levels: dict, title: str, columns: dict = PIXEL_COLUMNS) -> None:
    """A PNG table, one row per ablation and level, of the summary keys ``columns`` names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols, keys = list(columns), list(columns.values())
    rows, labels = [], []
    for name, by_level in levels.items():
        for level, m in by_level.items():
            labels.append(f"{name} {level}")
            rows.append([("-" if m[k] is None else f"{m[k]:.3f}" if isinstance(m[k], float) else str(m[k])) for k in keys])
    fig, ax = plt.subplots(figsize=(11, 0.35 * len(rows) + 1.2))
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    if rows:
        ax.table(cellText=rows, rowLabels=labels, colLabels=cols, loc="center").auto_set_font_size(True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def run_bench(bench: BenchConfig, models, config: GeoSegConfig, ray_settings=None) -> dict:
    """Run the benchmark as a Ray Data job; returns and writes the summary."""
    from magseg_ray.cluster import RaySettings, ray_session
    from magseg_ray.files import write_atomic
    from magseg_ray.progress import Progress

    path = Path(bench.items) / "items.jsonl"
    if not path.is_file():
        raise ConfigError(f"{bench.items} has no items.jsonl (make one with jobs/make_geoseg_bench.py)")
    items = [line for line in path.read_text().splitlines() if line.strip()]
    with ray_session(ray_settings or RaySettings()):
        import ray  # after ray_session has set the loopback and auth environment

        ds = ray.data.from_items([{"item": i} for i in items]).map(
            BenchActor, fn_constructor_args=(models, config, bench), concurrency=bench.num_actors,
            num_cpus=bench.cpus_per_actor)
        records = []
        with Progress("[geoseg] items", total=len(items), unit="items") as progress:
            for row in ds.iter_rows():
                records.append(json.loads(row["record"]))
                progress.update(len(records), f"{sum('error' in r for r in records)} errors")
        records.sort(key=lambda r: r["id"])
    out = Path(bench.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"box_source": bench.box_source, "models": asdict(models), "config": asdict(config),
               "errors": [r for r in records if "error" in r], "levels": summarise(records, bench.ablations),
               "judge": summarise_judges(records, bench.ablations)}
    write_atomic(out / "items.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    write_atomic(out / "metrics.json", json.dumps(summary, indent=1))
    title = f"GeoSeg on {bench.items} (boxes: {bench.box_source})"
    write_table(out / "table.png", summary["levels"], title)
    if summary["judge"] is not None:
        write_table(out / "judge_table.png", summary["judge"], f"{title}, judge {bench.judge}", JUDGE_COLUMNS)
    return summary
