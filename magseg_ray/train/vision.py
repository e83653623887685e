"""Dense pretraining of an offline preset's vision tower, standing in for SigLIP's pretraining.

A real Gemma3 checkpoint brings a pretrained SigLIP tower whose image tokens already describe what
is where; an offline preset starts random, and SFT alone teaches its tower slowly: the only signal
reaching it is each answer's loss through a decoder that is itself learning, so the decoder learns
the answer prior ("all field") long before it learns to read the image. This step gives the tower
and projector a direct, dense signal first: every soft token of the two images a patch prompt shows
(the chip, and the local crop around the patch) predicts, through a throw-away linear head, the
class shares (schema ``fields3``) of the pixels it covers, split into ``sub_cells x sub_cells``
blocks. With the ``small`` preset's 8 x 8 tokens per image, the 256 px chip gives one token per
32 px patch and a 64 px crop (``crop_scale`` 2) one per 8 x 8 pixels; with ``crop_scale`` 1 and
``sub_cells`` 4, every pixel of the 32 px crop is a target of its own, so the tokens learn where
inside them a boundary runs, which an R-RLE answer must say to the pixel. SFT then starts from a
model whose image tokens can be read, and only has to learn to write them as R-RLE.

Each token must also say *where* it is. The class targets do not depend on a token's place, so
without more the tower's position embeddings wash out of the projected tokens: in the demo model of
2026-11-23 a linear probe on the crop's tokens found their column no better than chance (0.14 against
0.125), and the decoder wrote boundary runs of the right shape in the wrong column. A second head
(``position_weight``) has every token predict its own row and column in the grid, so that "the
token of column 3" is something the decoder can attend to.

Run it on the training split only (same ``split_of`` rule and ``val_fraction`` as SFT); it reports
token accuracy (majority class) and position accuracy on the validation split before and after.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from magseg_ray.config import doc
from magseg_ray.errors import ConfigError
from magseg_ray.progress import Progress
from magseg_ray.masks.schemas import BOUNDARY_WIDTH


@dataclass(frozen=True)
class VisionPretrainConfig:
    """Settings of a dense vision pretraining run."""

    data: str = field(default="", metadata=doc("scenes with labels: a folder or catalog (as SFT's --data)"))
    labels: str = field(default="", metadata=doc(
        "field polygons for the scenes (fiboa GeoParquet, GeoPackage, shapefile; any CRS); default: each "
        "scene's <id>.labels.tif or <id>.fields.gpkg"))
    out: str = field(default="", metadata=doc("folder to write the model to (what SFT's --base takes)"))
    base: str = field(default="small", metadata=doc("offline preset (tiny, small) or a checkpoint folder"))
    chip_size: int = field(default=256, metadata=doc("chip side in pixels, as SFT and mapping use"))
    patch_size: int = field(default=32, metadata=doc("patch side in pixels"))
    crop_scale: float = field(default=2.0, metadata=doc("local crop side / patch side; give SFT the same value"))
    sub_cells: int = field(default=1, metadata=doc(
        "each image token predicts the class shares of sub_cells x sub_cells blocks of its pixels "
        "(1: one share vector per token)"))
    boundary_width: int = field(default=BOUNDARY_WIDTH, metadata=doc(
        "half-width in pixels of the boundary class in the targets (see SFT's --boundary-width); give SFT "
        "the same value"))
    position_weight: float = field(default=1.0, metadata=doc(
        "weight of the loss by which each image token predicts its own row and column (0: off)"))
    val_fraction: float = field(default=0.2, metadata=doc("share of scenes held out (same rule as SFT)"))
    steps: int = field(default=600, metadata=doc("optimizer steps"))
    batch_size: int = field(default=32, metadata=doc("patch prompts per step (two images each)"))
    lr: float = field(default=1e-3, metadata=doc("peak learning rate (AdamW; 5 % warmup, cosine to a tenth)"))
    log_every: int = field(default=50, metadata=doc("steps between progress lines and validations"))
    seed: int = field(default=0, metadata=doc("seed of the preset and of the sampled chips"))
    use_gpu: bool = field(default=False, metadata=doc("train on this machine's GPU when it has one (else the CPU)"))
    augment: bool = field(default=True, metadata=doc(
        "turn and mirror each training chip at random (the 8 symmetries of the square), so that field edges "
        "of every direction reach the row-wise answers alike; validation chips are never changed"))


def read_labelled(scenes, boundary_width: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """RGB and ``fields3`` classes (at ``boundary_width``) of labelled scenes (catalog rows with their
    ``labels``: :func:`~magseg_ray.chips.labels.labelled_scenes`), read whole."""
    from magseg_ray.chips.labels import read_labelled_scene
    from magseg_ray.masks.schemas import classes_from_instances

    items = []
    for row in scenes.itertuples():
        image, instances = read_labelled_scene(row)
        items.append((image, classes_from_instances(instances, "fields3", boundary_width)))
    return items


class SceneSampler:
    """Whole labelled scenes in memory (RGB + fields3 classes) and samplers of patch prompt windows."""

    def __init__(self, items: list[tuple[np.ndarray, np.ndarray]], chip: int, patch: int, crop: int, grid: int = 1,
                 sub: int = 1, augment: bool = False):
        self.chip, self.patch, self.crop, self.grid, self.sub = chip, patch, crop, grid, sub
        self.augment = augment
        """Turn and mirror each window at random (one of the 8 symmetries of the square)."""
        self.items = [(image, classes) for image, classes in items if min(image.shape[:2]) >= chip]
        if not self.items:
            raise ConfigError(f"no labelled scene of at least {chip} px to train on")

    def window(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
        """A random chip of a random scene, its classes, and a random patch box in it."""
        image, classes = self.items[rng.integers(len(self.items))]
        y = rng.integers(image.shape[0] - self.chip + 1)
        x = rng.integers(image.shape[1] - self.chip + 1)
        px, py = (rng.integers(self.chip // self.patch, size=2) * self.patch).tolist()
        chip, cls = image[y : y + self.chip, x : x + self.chip], classes[y : y + self.chip, x : x + self.chip]
        if self.augment:
            turns, mirror = rng.integers(4), rng.integers(2)
            chip, cls = np.rot90(chip, turns), np.rot90(cls, turns)
            if mirror:
                chip, cls = chip[:, ::-1], cls[:, ::-1]
            chip, cls = np.ascontiguousarray(chip), np.ascontiguousarray(cls)
        return chip, cls, (px, py, px + self.patch, py + self.patch)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[list[np.ndarray], np.ndarray]:
        """``2n`` images (chip, crop, chip, crop, ...) and their token targets ``(2n, grid**2, sub**2, 3)``."""
        from magseg_ray.prompt import local_crop

        images, targets = [], []
        for _ in range(n):
            chip, cls, box = self.window(rng)
            crop = local_crop(chip, box, self.crop)
            # outside the chip the crop is zero-padded: count it as background, as the answer does not see it
            crop_cls = local_crop(cls[..., None], box, self.crop)[..., 0]
            images += [chip, crop]
            targets += [_shares(cls, self.grid, self.sub), _shares(crop_cls, self.grid, self.sub)]
        return images, np.stack(targets)


def _shares(classes: np.ndarray, grid: int, sub: int = 1) -> np.ndarray:
    """Class shares (b, f, e) of the ``sub x sub`` blocks of each cell of a ``grid x grid`` split of a
    square class mask: ``(grid**2, sub**2, 3)``, cells and blocks in row-major order."""
    n = grid * sub
    s = classes.shape[0] // n
    blocks = classes[: s * n, : s * n].reshape(grid, sub, s, grid, sub, s).transpose(0, 3, 1, 4, 2, 5)
    blocks = blocks.reshape(grid * grid, sub * sub, s * s)
    return np.stack([(blocks == k).mean(2) for k in range(3)], 2).astype(np.float32)


def token_losses(features, targets: np.ndarray, head, where, position_weight: float = 1.0):
    """Loss, class accuracy and position accuracy of image tokens ``features`` (``images x tokens x
    hidden``) against their class-share ``targets`` (from :meth:`_Scenes.sample`), read by the linear
    heads ``head`` (class shares of each token's blocks) and ``where`` (its row and column)."""
    import torch

    grid = math.isqrt(features.shape[1])
    logits = head(features).unflatten(-1, (targets.shape[2], 3))
    target = torch.from_numpy(targets).to(features.device)
    loss = -(target * torch.log_softmax(logits, -1)).sum(-1).mean()
    accuracy = (logits.argmax(-1) == target.argmax(-1)).float().mean()
    # (images, tokens, 2, grid) -> (images, grid, 2, tokens): rows and columns as two cross-entropies
    places = where(features).unflatten(-1, (2, grid)).permute(0, 3, 2, 1)
    token = torch.arange(grid * grid, device=features.device)
    truth = torch.stack([token // grid, token % grid]).expand(len(features), 2, grid * grid)
    loss = loss + position_weight * torch.nn.functional.cross_entropy(places, truth)
    placed = (places.argmax(1) == truth).all(1).float().mean()
    return loss, float(accuracy), float(placed)


def samplers(model, cfg: VisionPretrainConfig, train_items: list, val_items: list) -> tuple:
    """Training and validation :class:`SceneSampler` for ``model``'s token grid and ``cfg``'s layout."""
    from magseg_ray.prompt import PromptConfig

    grid, sub = math.isqrt(model.config.mm_tokens_per_image), cfg.sub_cells
    crop = PromptConfig(patch_size=cfg.patch_size, crop_scale=cfg.crop_scale, boundary_width=cfg.boundary_width).crop_size
    if sub < 1 or cfg.chip_size % (grid * sub) or crop % (grid * sub):
        raise ConfigError(f"chip_size {cfg.chip_size} and the {crop} px crop must split into the model's "
                          f"{grid} x {grid} image tokens times sub_cells {cfg.sub_cells}")
    train = SceneSampler(train_items, cfg.chip_size, cfg.patch_size, crop, grid, sub, cfg.augment)
    return train, SceneSampler(val_items, cfg.chip_size, cfg.patch_size, crop, grid, sub) if val_items else train


def train_tower(model, processor, train: SceneSampler, val: SceneSampler, cfg: VisionPretrainConfig,
                device="cpu") -> tuple[list[dict], float]:
    """Dense pretraining of ``model``'s tower and projector (see module doc) on ``device``; returns the
    history (validation rows) and the validation majority-class accuracy."""
    import torch

    from magseg_ray.train.sft import lr_factor

    torch.manual_seed(cfg.seed)
    hidden = model.config.text_config.hidden_size
    head = torch.nn.Linear(hidden, train.sub * train.sub * 3).to(device)
    where = torch.nn.Linear(hidden, 2 * train.grid).to(device)
    params = [*model.model.vision_tower.parameters(), *model.model.multi_modal_projector.parameters(),
              *head.parameters(), *where.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(lr_factor, warmup=max(cfg.steps // 20, 1), total=cfg.steps))

    def loss_and_accuracy(images, targets):
        pixels = processor.image_processor(images, return_tensors="pt")["pixel_values"].to(device)
        features = model.model.get_image_features(pixels).pooler_output
        return token_losses(features, targets, head, where, cfg.position_weight)

    val_batch = val.sample(np.random.default_rng(10**6 + cfg.seed), 128)

    def validate() -> dict:
        with torch.no_grad():
            _, accuracy, placed = loss_and_accuracy(*val_batch)
        return {"val_token_accuracy": accuracy, "val_position_accuracy": placed}

    rng = np.random.default_rng(cfg.seed)
    model.train()
    history = [{"step": 0, **validate()}]
    majority = float((val_batch[1].argmax(-1) == np.bincount(val_batch[1].argmax(-1).ravel()).argmax()).mean())
    start, losses = time.perf_counter(), []
    with Progress("[vision] steps", total=cfg.steps, unit="steps") as progress:
        for step in range(1, cfg.steps + 1):
            loss, *_ = loss_and_accuracy(*train.sample(rng, cfg.batch_size))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            progress.update(step, f"loss {np.mean(losses):.4f}")
            if step % cfg.log_every == 0 or step == cfg.steps:
                row = {"step": step, "loss": float(np.mean(losses)), **validate(),
                       "seconds": round(time.perf_counter() - start, 1)}
                losses.clear()
                history.append(row)
                progress.update(step, f"loss {row['loss']:.4f}, val token accuracy {row['val_token_accuracy']:.3f} "
                                      f"(majority class {majority:.3f}), position accuracy "
                                      f"{row['val_position_accuracy']:.3f}")
    model.eval()
    return history, majority


def pretrain_vision(cfg: VisionPretrainConfig) -> dict:
    """Pretrain the vision tower and projector of ``cfg.base``; save the whole model to ``cfg.out``."""
    import torch

    from magseg_ray.chips.pipeline import split_of
    from magseg_ray.model.card import ModelPrompt, write_model_prompt
    from magseg_ray.model.checkpoint import load_model, save_model
    from magseg_ray.model.presets import PRESETS, build_model
    from magseg_ray.chips.labels import labelled_scenes
    from magseg_ray.scenes.catalog import load_catalog
    from magseg_ray.train.curves import plot_curves

    if not cfg.data or not cfg.out:
        raise ConfigError("--data and --out are required")
    if cfg.position_weight < 0:
        raise ConfigError(f"position_weight {cfg.position_weight} must be >= 0")
    if Path(cfg.out).exists() and any(Path(cfg.out).iterdir()):
        raise ConfigError(f"--out {cfg.out!r} is not empty: pretraining writes a whole model there; "
                          "give a new folder")
    model, processor = build_model(cfg.base, seed=cfg.seed) if cfg.base in PRESETS else load_model(cfg.base)
    scenes = labelled_scenes(load_catalog(cfg.data).scenes, cfg.labels, repr(cfg.data))
    split = np.array([split_of(s, cfg.val_fraction, 0) for s in scenes["id"]])
    train, val = samplers(model, cfg, read_labelled(scenes[split == "train"], cfg.boundary_width),
                          read_labelled(scenes[split == "val"], cfg.boundary_width))
    device = torch.device("cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu")
    history, majority = train_tower(model.to(device), processor, train, val, cfg, device)
    out = Path(cfg.out)
    save_model(model.cpu(), processor, out)
    # the prompt settings the tokens were trained for: SFT from this base refuses others
    write_model_prompt(out, ModelPrompt(patch_size=cfg.patch_size, chip_size=cfg.chip_size, crop_scale=cfg.crop_scale,
                                        boundary_width=cfg.boundary_width))
    summary = {"config": cfg.__dict__, "history": history, "val_majority_class_accuracy": majority,
               "final": history[-1], "model": str(out)}
    (out / "vision_pretrain.json").write_text(json.dumps(summary, indent=1))
    plot_curves(history, ["loss", "val_token_accuracy", "val_position_accuracy"], out / "vision_pretrain.png",
                f"Dense vision pretraining ({cfg.base})")
    return summary
