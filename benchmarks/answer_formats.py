"""Which answer format a small decoder learns to write faster: R-RLE against anchored, on oracle tokens.

    nice -n 19 python benchmarks/answer_formats.py [--labels DIR] [--steps 250] [--val 100] [--decoding free]

A controlled measurement (issue 20): the "image tokens" are oracles, so the only thing learned is
turning token positions into mask text. Each of the 8x8 tokens of a 32x32 patch holds the one-hot
classes of its 4x4 pixels. Patches are random 32x32 windows of the real ``*.labels.tif`` rasters in
DIR (default: the shared naip-fields scenes, else the repo's test sample), classes from
``classes_from_instances(..., "fields3", boundary_width=6)``; single-class windows are kept one time
in five. Scenes are split as SFT splits them (``split_of``, ``--val-fraction``): training patches
come from training scenes, the ``--val`` held-out patches from the others.

For each format (``rrle``, the named baseline, and ``anchored``) the answer texts come from the
project codec (:func:`magseg_ray.rle.codec_for`) and are cut into tokens by the project tokenizer
(numbers are single tokens); both formats share one small vocabulary (those tokens, BOS, EOS, PAD).
The same decoder (a pre-norm causal transformer over [image tokens][answer], the same seed) is
trained for the same steps on the same batches of patches (AdamW, 100 warmup steps, cosine decay),
then answers the held-out patches greedily: ``--decoding free`` takes the most probable token and
decodes leniently (the issue's measurement), ``constrained`` runs the format's grammar as the
project does (every answer a valid mask). Prints one JSON line: pixel accuracy, field IoU and
boundary IoU (pixels pooled over the held-out patches), exact-patch rate, mean answer tokens and
training seconds (wall clock and CPU) per format, and ``ratio`` = anchored / rrle per metric.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from torch import nn

from magseg_ray.chips.pipeline import split_of
from magseg_ray.masks.schemas import classes_from_instances
from magseg_ray.model.tokenizer import build_tokenizer
from magseg_ray.prompt import prompt_corpus
from magseg_ray.rle import ANSWER_FORMATS, codec_for

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DIRS = [ROOT.parent / "shared" / "data" / "naip-fields", ROOT / "tests" / "data" / "naip"]
P, GRID, SCHEMA = 32, 8, "fields3"
SPECIALS = ("<pad>", "<bos>", "<eos>")
PAD, BOS, EOS = 0, 1, 2
MAX_ANSWER = 200
"""Answer tokens the decoder is trained on and may write (longer training answers are skipped)."""


def scene_classes(labels_dir: Path, val_fraction: float) -> dict[str, list[np.ndarray]]:
    """Class rasters of the scenes in ``labels_dir``, by split (``train``, ``val``)."""
    out: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    for path in sorted(labels_dir.glob("*.labels.tif")):
        with rasterio.open(path) as src:
            classes = classes_from_instances(src.read(1), SCHEMA, boundary_width=6)
        out[split_of(path.name.removesuffix(".labels.tif"), val_fraction)].append(classes)
    return out


def sample_patches(scenes: list[np.ndarray], n: int, rng: np.random.Generator, keep_uniform: float = 0.2) -> np.ndarray:
    """``n`` random 32x32 class windows; a single-class window is kept with probability ``keep_uniform``."""
    out = []
    while len(out) < n:
        classes = scenes[rng.integers(len(scenes))]
        y, x = rng.integers(0, classes.shape[0] - P), rng.integers(0, classes.shape[1] - P)
        m = classes[y : y + P, x : x + P]
        if (m == m.flat[0]).all() and rng.random() > keep_uniform:
            continue
        out.append(m.copy())
    return np.stack(out)


def oracle_tokens(masks: np.ndarray) -> torch.Tensor:
    """``n x 64 x 48``: each token the one-hot classes of its 4x4 pixels."""
    n, cell = len(masks), P // GRID
    cells = masks.reshape(n, GRID, cell, GRID, cell).transpose(0, 1, 3, 2, 4).reshape(n, GRID * GRID, cell * cell)
    return torch.from_numpy(np.eye(3, dtype=np.float32)[cells].reshape(n, GRID * GRID, -1))


class Vocabulary:
    """The answer pieces of the project tokenizer that both formats use, plus BOS, EOS and PAD. Has
    the two methods a format's logits processor asks of a tokenizer."""

    def __init__(self):
        self.tokenizer = build_tokenizer(prompt_corpus())
        self.pieces = [*SPECIALS, *(str(n) for n in range(P + 1)), "b", "f", "e", "*", ":", "\n"]
        self.index = {p: i for i, p in enumerate(self.pieces)}

    def ids(self, text: str) -> list[int]:
        pieces = self.tokenizer.convert_ids_to_tokens(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return [self.index[p] for p in pieces]

    def text(self, ids: list[int]) -> str:
        return "".join(self.pieces[i] for i in ids if i >= len(SPECIALS))

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self.pieces[i] for i in ids]

    def __len__(self) -> int:
        return len(self.pieces)


class Block(nn.Module):
    """A pre-norm transformer block whose attention can extend a key/value cache."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.ReLU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor, cache: tuple | None = None) -> tuple[torch.Tensor, tuple]:
        b, t, d = x.shape
        q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in self.qkv(self.norm1(x)).chunk(3, -1))
        if cache is not None:  # one new position attends to every cached one
            k, v = torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=cache is None)
        x = x + self.out(att.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x)), (k, v)


class Decoder(nn.Module):
    """Image tokens, then answer tokens, through causal blocks; predicts the next answer token."""

    def __init__(self, vocab: int, d: int, layers: int, heads: int = 4):
        super().__init__()
        self.img, self.tok = nn.Linear(48, d), nn.Embedding(vocab, d)
        self.pos = nn.Embedding(GRID * GRID + MAX_ANSWER + 2, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)

    def forward(self, x: torch.Tensor, start: int = 0, caches: list | None = None) -> tuple[torch.Tensor, list]:
        x = x + self.pos(torch.arange(start, start + x.shape[1]))
        new = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, None if caches is None else caches[i])
            new.append(kv)
        return self.head(self.norm(x)), new

    def loss(self, img: torch.Tensor, answers: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, _ = self(torch.cat([self.img(img), self.tok(answers)], 1))
        return F.cross_entropy(logits[:, img.shape[1] :].transpose(1, 2), targets, ignore_index=-100)


def batch(seqs: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoder inputs ``[BOS] + answer`` and targets ``answer + [EOS]``, padded."""
    width = max(len(s) for s in seqs) + 1
    inputs = torch.full((len(seqs), width), PAD)
    targets = torch.full((len(seqs), width), -100)
    for i, s in enumerate(seqs):
        inputs[i, : len(s) + 1] = torch.tensor([BOS, *s])
        targets[i, : len(s) + 1] = torch.tensor([*s, EOS])
    return inputs, targets


def train(model: Decoder, images: np.ndarray, seqs: list[list[int]], keep: np.ndarray, args) -> tuple[float, float]:
    """``args.steps`` AdamW steps on batches drawn from ``keep`` (the same draws for every format);
    returns the wall-clock and CPU seconds taken."""
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = min(100, args.steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    rng = np.random.default_rng(3)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        idx = rng.choice(keep, args.batch)
        inputs, targets = batch([seqs[i] for i in idx])
        loss = model.loss(oracle_tokens(images[idx]), inputs, targets)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
    return time.perf_counter() - start, time.process_time() - cpu


@torch.no_grad()
def answer(model: Decoder, masks: np.ndarray, vocab: Vocabulary, processor=None) -> list[list[int]]:
    """Greedy answers (KV cache) for the patches ``masks``; ``processor``: a format's grammar."""
    n = len(masks)
    seq = torch.full((n, 1), BOS)
    logits, caches = model(torch.cat([model.img(oracle_tokens(masks)), model.tok(seq)], 1))
    done = torch.zeros(n, dtype=torch.bool)
    for t in range(MAX_ANSWER):
        scores = logits[:, -1].clone()
        scores[:, [PAD, BOS]] = float("-inf")
        if processor is not None:
            scores = processor(seq, scores)
        token = torch.where(done, PAD, scores.argmax(-1))
        done |= token == EOS
        seq = torch.cat([seq, token[:, None]], 1)
        if bool(done.all()):
            break
        logits, caches = model(model.tok(token[:, None]), GRID * GRID + 1 + t, caches)
    return [[i for i in row[1:].tolist() if i not in (PAD, EOS)] for row in seq]


def scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Pixel accuracy, field and boundary IoU (pixels pooled over patches), exact-patch rate."""
    def iou(c: int) -> float:
        union = ((pred == c) | (truth == c)).sum()
        return float(((pred == c) & (truth == c)).sum() / union) if union else 1.0

    return {"pixel_acc": round(float((pred == truth).mean()), 4), "field_iou": round(iou(1), 4),
            "boundary_iou": round(iou(2), 4),
            "exact": round(float(np.mean([(p == t).all() for p, t in zip(pred, truth)])), 4)}


def run_format(name: str, train_m: np.ndarray, val_m: np.ndarray, keep: np.ndarray, vocab: Vocabulary, args) -> dict:
    """Train a fresh decoder on ``name``'s answers and score its held-out answers."""
    fmt = codec_for(name)
    seqs = [vocab.ids(fmt.encode(m, SCHEMA)) for m in train_m]
    torch.manual_seed(0)
    model = Decoder(len(vocab), args.d, args.layers)
    seconds, cpu = train(model, train_m, seqs, keep, args)
    model.eval()
    processor = None
    if args.decoding == "constrained":
        processor = fmt.logits_processor(vocab, P, P, SCHEMA, 1, [EOS], MAX_ANSWER)
    outs = [o for i in range(0, len(val_m), 100) for o in answer(model, val_m[i : i + 100], vocab, processor)]
    decoded = [fmt.decode(vocab.text(o), P, P, SCHEMA) for o in outs]
    pred = np.stack([mask for mask, _ in decoded])
    return {**scores(pred, val_m), "repaired": sum(not report.ok for _, report in decoded),
            "mean_tokens": round(float(np.mean([len(s) for s in seqs])), 1), "train_s": round(seconds, 1),
            "train_cpu_s": round(cpu, 1)}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--labels", type=Path, default=next((d for d in DEFAULT_DIRS if d.is_dir()), None),
                   help="folder of *.labels.tif instance rasters")
    p.add_argument("--steps", type=int, default=250, help="training steps per format (default 250: about 10 CPU "
                   "minutes for both; the issue's table reports 500 and 1000)")
    p.add_argument("--batch", type=int, default=32, help="patches per step (default 32)")
    p.add_argument("--val", type=int, default=100, help="held-out patches (default 100)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of scenes held out (default 0.2)")
    p.add_argument("--pool", type=int, default=20000, help="training patches drawn from (default 20000)")
    p.add_argument("--d", type=int, default=192, help="decoder width (default 192)")
    p.add_argument("--layers", type=int, default=4, help="decoder layers (default 4)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--decoding", choices=["free", "constrained"], default="free",
                   help="free: greedy, decoded leniently (default); constrained: under the format's grammar")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # on 2 shared cores a second thread doubles the CPU time, not the speed
    scenes = scene_classes(args.labels, args.val_fraction)
    train_m = sample_patches(scenes["train"], args.pool, np.random.default_rng(0))
    val_m = sample_patches(scenes["val"] or scenes["train"], args.val, np.random.default_rng(1))
    vocab = Vocabulary()
    lengths = np.array([[len(vocab.ids(codec_for(f).encode(m, SCHEMA))) for f in ANSWER_FORMATS] for m in train_m])
    keep = np.flatnonzero(lengths.max(1) < MAX_ANSWER)  # patches every format can write, drawn alike
    result = {"benchmark": "answer_formats", "baseline": "rrle", "labels": str(args.labels), "steps": args.steps,
              "batch": args.batch, "decoder": f"{args.layers}x{args.d}", "decoding": args.decoding,
              "train_scenes": len(scenes["train"]), "val_scenes": len(scenes["val"]), "val_patches": args.val}
    for name in ANSWER_FORMATS:
        result[name] = run_format(name, train_m, val_m, keep, vocab, args)
    result["ratio"] = {k: round(result["anchored"][k] / result["rrle"][k], 3) if result["rrle"][k] else None
                       for k in ("pixel_acc", "field_iou", "boundary_iou", "exact")}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
