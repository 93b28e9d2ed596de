"""Bootstrap confidence intervals of the 12 COCO stats, from a run's own per-image matches.

Resampling images with replacement does not change any image's matching (pycocotools matches within an image and
category), so a resample is the same matched detections with a weight per image: its multiplicity. The
accumulation then runs on weighted counts: cumulative true positives and counted detections become sums of the
weights of their images, and the ground-truth count the weighted sum of each image's count. This is exactly
pycocotools' answer on the resampled image set (copies of an image carry equal scores, so they sit next to each
other in its score order, and the precision envelope sampled at the recall thresholds is the same whether a copy's
true positives are counted one by one or at once), which tests/unit/test_bootstrap.py checks against
pycocotools run on materialised resamples.

Cost. Only the positions of true positives are needed (precision and recall are read there), so the counted
detections between two true positives are summed per image first ((segment, image) pairs with a count) and the
weights touch each pair once per resample. What an IoU threshold changes in the counted set is confined to matched
detections, so the bulk is summed once per area range, the few differences per threshold.

The weighted sums over images (ground truth, final true positives) run over the images with a nonzero count only,
in numpy's own loops rather than the BLAS, whose threads spin between small products (on a busy host that was four
fifths of the bootstrap's CPU).

A paired interval (two runs on the same images, e.g. FP16 vs FP32) uses the same resamples for both runs: the
interval of the difference is far narrower than either run's own, because most of the per-image noise is shared.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.evaluate.metrics import STAT_NAMES

DEFAULT_RESAMPLES = 1000
DEFAULT_SEED = 0
LEVEL = 0.95
_EPS = np.spacing(1)
_CHUNK_ELEMENTS = 8_000_000  # resamples x detections per block: bounds the memory of one gather


@dataclass
class _Category:
    img: np.ndarray  # [N] image index of each detection, in pycocotools' score order
    rank: np.ndarray  # [N] rank of the detection within its image (0 = its best)
    tp: np.ndarray  # [A, T, N] true positive (matched, not ignored)
    valid: np.ndarray  # [A, T, N] counted (not ignored): a true or a false positive
    npig: np.ndarray  # [I, A] non-ignored ground truth per image


class MatchTable:
    """The per-image matches of one run on one image set, laid out for the weighted accumulation."""

    def __init__(self, image_ids, categories, cats: list, params):
        self.image_ids = np.asarray(image_ids, np.int64)
        self.categories = list(categories)
        self.cats = cats
        self.rec_thrs = np.asarray(params.recThrs, np.float64)
        self.max_dets = list(params.maxDets)
        self.T = len(params.iouThrs)
        self.A = len(params.areaRng)
        self.point: dict | None = None  # the 12 stats of the run itself, when known

    @classmethod
    def from_entries(cls, entries_by_cat: dict, image_ids, categories, params) -> MatchTable:
        """From IncrementalCocoEval's per-pair results: {category: [(image_id, scores, matched, ignored, npig)]}."""
        ids = np.asarray(sorted(set(int(i) for i in image_ids)), np.int64)
        index = {int(i): n for n, i in enumerate(ids)}
        A = len(params.areaRng)
        cats: list[_Category | None] = []
        for cat in categories:
            entries = sorted((e for e in entries_by_cat.get(cat, ()) if int(e[0]) in index), key=lambda e: e[0])
            npig = np.zeros((len(ids), A), np.float64)
            if not entries:
                cats.append(None)
                continue
            for e in entries:
                npig[index[int(e[0])]] += e[4]
            scores = np.concatenate([e[1] for e in entries])
            img = np.concatenate([np.full(len(e[1]), index[int(e[0])], np.int64) for e in entries])
            rank = np.concatenate([np.arange(len(e[1])) for e in entries])
            matched = np.concatenate([e[2] for e in entries], axis=2)
            ignored = np.concatenate([e[3] for e in entries], axis=2)
            order = np.argsort(-scores, kind="mergesort")  # pycocotools' order: image order, then by score
            valid = ~ignored[:, :, order]
            cats.append(_Category(img[order], rank[order], matched[:, :, order] & valid, valid, npig))
        return cls(ids, categories, cats, params)

    @classmethod
    def from_evaluator(cls, evaluator, image_ids) -> MatchTable:
        """A CocoEvaluator's run after evaluate(): the incremental engine's own matches, else matched once now."""
        inc = evaluator.incremental
        if inc is not None:
            return cls.from_entries(inc.entries, image_ids, evaluator.categories, inc.params)
        return cls.from_rows(evaluator.annotations, evaluator.store.rows(), image_ids, evaluator.categories)

    @classmethod
    def from_rows(cls, annotations: dict, rows: np.ndarray, image_ids, categories) -> MatchTable:
        """Match detections rows (image_id, x, y, w, h, score, category) once, as the incremental evaluator does."""
        from common.evaluate.incremental import IncrementalCocoEval

        ev = IncrementalCocoEval(annotations, categories)
        ids = sorted(set(int(i) for i in image_ids))
        rows = np.asarray(rows, np.float64).reshape(-1, 7)
        rows = rows[np.isin(rows[:, 0], ids) & np.isin(rows[:, 6], list(categories))]
        ev.add(rows)
        ev.complete(ids)
        stats = ev.result(ids)
        table = cls.from_entries(ev.entries, ids, ev.categories, ev.params)
        table.point = {name: float(v) for name, v in zip(STAT_NAMES, stats)}
        return table


def resample_weights(n_images: int, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> np.ndarray:
    """[resamples, n_images] multiplicities: n_images images drawn with replacement, per resample."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_images, np.full(n_images, 1.0 / n_images), size=resamples).astype(np.float32)


def _thresholds_reached(rc: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """searchsorted(thr, rc, 'right') for evenly spaced thresholds 0, 1/(R-1), ..., 1 without a binary search:
    the guess from the spacing, corrected by the exact comparisons (thr[k] <= rc decides, as in pycocotools)."""
    R = len(thr)
    g = np.clip(np.floor(rc * (R - 1)).astype(np.int64) + 1, 0, R)
    g -= (g > 0) & (thr[np.maximum(g - 1, 0)] > rc)  # the guess counted a threshold above rc
    g += (g < R) & (thr[np.minimum(g, R - 1)] <= rc)  # ... or missed one at or below it
    return g


def _curve_means(c: _Category, a: int, Wt: np.ndarray, rec_thrs: np.ndarray, npig_w: np.ndarray) -> np.ndarray:
    """[T, B]: mean over the recall thresholds of the sampled precision envelope, per IoU threshold and resample
    (pycocotools' precision[t, :, k, a, maxDets=100] averaged over R). Wt: [images, B] weights (float32); npig_w:
    [B] the weighted non-ignored ground truth of area range a.

    Arrays are laid out [detections, resamples]: gathering an image's weights is a copy of one contiguous row."""
    n_img, B = Wt.shape
    T, R = c.tp.shape[1], len(rec_thrs)
    out = np.zeros((T, B))
    tp_pos = [np.flatnonzero(c.tp[a, t]) for t in range(T)]
    if not any(len(p) for p in tp_pos):
        return out
    cuts = np.unique(np.concatenate(tp_pos))
    last = cuts[-1]
    base = c.valid[a, T - 1, : last + 1]  # the most demanding threshold: almost nothing matched there
    # counted detections of the base set up to each cut: summed per (segment, image) pair, then over segments
    pos = np.flatnonzero(base)
    seg = np.searchsorted(cuts, pos, side="left")
    keys, counts = np.unique(seg * n_img + c.img[pos], return_counts=True)
    per_seg = np.zeros((len(cuts), B), np.float32)
    if len(keys):
        seg_u, img_u = keys // n_img, keys % n_img
        starts = np.flatnonzero(np.r_[True, seg_u[1:] != seg_u[:-1]])
        rows = Wt.take(img_u, axis=0)
        if counts.max() > 1:
            rows *= counts[:, None].astype(np.float32)
        per_seg[seg_u[starts]] = np.add.reduceat(rows, starts, axis=0)
        del rows
    base_at = np.cumsum(per_seg, axis=0, dtype=np.float64)  # exact: sums of small integers
    safe_npig = np.where(npig_w > 0, npig_w, 1.0)
    cols = np.arange(B)
    for t in range(T):
        tpp = tp_pos[t]
        n = len(tpp)
        if not n:
            continue
        counted = base_at[np.searchsorted(cuts, tpp)]
        # where this threshold's counted set differs from the base (matched detections only)
        diff = np.flatnonzero(c.valid[a, t, : last + 1] != base)
        if len(diff):
            delta = np.where(c.valid[a, t, diff], 1.0, -1.0)
            corr = np.cumsum(Wt.take(c.img[diff], axis=0) * delta[:, None], axis=0)
            k = np.searchsorted(diff, tpp, side="right") - 1
            counted += np.where((k >= 0)[:, None], corr[np.maximum(k, 0)], 0.0)
        tp_cum = np.cumsum(Wt.take(c.img[tpp], axis=0), axis=0, dtype=np.float64)
        pr = tp_cum / (counted + _EPS)
        env = np.maximum.accumulate(pr[::-1], axis=0)[::-1]
        # first position whose recall reaches each threshold = the count of positions below it: exact float
        # comparisons first (recall == threshold happens), then a count per (threshold, resample)
        g = _thresholds_reached(tp_cum / safe_npig, rec_thrs) * B + cols
        idx = np.cumsum(np.bincount(g.ravel(), minlength=(R + 1) * B).reshape(R + 1, B)[:R], axis=0)
        q = np.where(idx < n, env[np.minimum(idx, n - 1), cols], 0.0)
        out[t] = q.mean(axis=0)
    return out


def _weighted(counts: np.ndarray, Wt: np.ndarray) -> np.ndarray:
    """[K, B] = counts [K, images] @ Wt, summed over the images with a nonzero count only (a category's ground
    truth and matches sit on a few hundred of the images). numpy's own einsum loop, not the BLAS: between these
    small products the BLAS threads spin, which cost several times the product's own CPU (on a busy host most of
    the bootstrap's). Exact: sums of small integers in float32."""
    nz = np.flatnonzero(counts.any(axis=0))
    if not len(nz):
        return np.zeros((len(counts), Wt.shape[1]))
    return np.einsum("kn,nb->kb", counts[:, nz].astype(np.float32), Wt.take(nz, axis=0)).astype(np.float64)


def _final_recalls(c: _Category, max_dets: list, Wt: np.ndarray, npig_w: np.ndarray) -> dict:
    """{AR stat: [T, B]}: weighted true positives among each image's top max_det over the weighted ground
    truth of the stat's area range (npig_w: [A, B])."""
    n_img, T = Wt.shape[0], c.tp.shape[1]
    counts = np.stack(
        [
            np.bincount(c.img[(c.rank < max_dets[m]) & c.tp[a, t]], minlength=n_img)
            for a, m in _AR.values()
            for t in range(T)
        ]
    )
    tp_w = _weighted(counts, Wt).reshape(len(_AR), T, -1)
    return {name: tp_w[k] / np.where(npig_w[a] > 0, npig_w[a], 1.0) for k, (name, (a, _)) in enumerate(_AR.items())}


# (stat, area index, max-detections index, IoU threshold index or None = mean over all) as summarize() reads them
_AP = {"AP": (0, None), "AP50": (0, 0), "AP75": (0, 5), "APs": (1, None), "APm": (2, None), "APl": (3, None)}
_AR = {"AR1": (0, 0), "AR10": (0, 1), "AR100": (0, 2), "ARs": (1, 2), "ARm": (2, 2), "ARl": (3, 2)}


def resampled_stats(table: MatchTable, W: np.ndarray) -> np.ndarray:
    """[B, 12]: the 12 COCO stats of every resample (rows of W: image multiplicities, columns the table's images).
    A stat with no category having ground truth in a resample is -1, as pycocotools reports it."""
    B, n_img = W.shape
    if n_img != len(table.image_ids):
        raise ValueError(f"weights for {n_img} images, table of {len(table.image_ids)}")
    stats = np.full((B, len(STAT_NAMES)), -1.0)
    biggest = max(
        (int(c.tp[0].sum(axis=0).astype(bool).sum()) + len(c.img) for c in table.cats if c is not None), default=1
    )
    chunk = max(1, _CHUNK_ELEMENTS // max(1, biggest))
    for lo in range(0, B, chunk):
        wt = np.ascontiguousarray(W[lo : lo + chunk].T, dtype=np.float32)  # [images, b]
        b = wt.shape[1]
        ap_sum = {name: np.zeros(b) for name in _AP}
        ar_sum = {name: np.zeros(b) for name in _AR}
        n_cat = {a: np.zeros(b) for a in range(table.A)}
        for c in table.cats:
            if c is None:
                continue
            npig_w = _weighted(c.npig.T, wt)  # [A, b]
            has_gt = {a: npig_w[a] > 0 for a in range(table.A)}
            means = {}
            for name, (a, t) in _AP.items():
                if a not in means:
                    means[a] = _curve_means(c, a, wt, table.rec_thrs, npig_w[a])
                value = means[a].mean(axis=0) if t is None else means[a][t]
                ap_sum[name] += np.where(has_gt[a], value, 0.0)
            for name, recall in _final_recalls(c, table.max_dets, wt, npig_w).items():
                ar_sum[name] += np.where(has_gt[_AR[name][0]], recall.mean(axis=0), 0.0)
            for a in range(table.A):
                n_cat[a] += has_gt[a]
        for j, name in enumerate(STAT_NAMES):
            a = _AP[name][0] if name in _AP else _AR[name][0]
            s = ap_sum[name] if name in _AP else ar_sum[name]
            stats[lo : lo + b, j] = np.where(n_cat[a] > 0, s / np.where(n_cat[a] > 0, n_cat[a], 1), -1.0)
    return stats


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    ok = samples[np.isfinite(samples)]
    lo, hi = np.percentile(ok, [(1 - level) / 2 * 100, (1 + level) / 2 * 100]) if len(ok) else (np.nan, np.nan)
    return float(lo), float(hi)


def intervals(
    table: MatchTable, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED, level: float = LEVEL
) -> dict:
    """Percentile intervals of the 12 stats: {'method', 'level', 'resamples', 'seed', 'images', 'stats':
    {name: [lo, hi]}} (0-1 scale, as the metrics)."""
    W = resample_weights(len(table.image_ids), resamples, seed)
    s = resampled_stats(table, W)
    return {
        "method": "bootstrap over images (percentile)",
        "level": level,
        "resamples": resamples,
        "seed": seed,
        "images": len(table.image_ids),
        "stats": {
            name: list(_interval(np.where(s[:, j] >= 0, s[:, j], np.nan), level)) for j, name in enumerate(STAT_NAMES)
        },
    }


def paired_interval(
    candidate: MatchTable,
    reference: MatchTable,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_SEED,
    level: float = LEVEL,
    metrics=("AP", "AP50"),
) -> dict:
    """Interval of candidate - reference for `metrics`, both runs resampled with the same images.
    {'method', 'level', 'resamples', 'seed', 'images', 'diff': {name: [lo, hi]}} (0-1 scale)."""
    if not np.array_equal(candidate.image_ids, reference.image_ids):
        raise ValueError(
            "a paired interval needs both runs on the same images "
            f"({len(candidate.image_ids)} vs {len(reference.image_ids)} images, or other ids)"
        )
    W = resample_weights(len(candidate.image_ids), resamples, seed)
    sc, sr = resampled_stats(candidate, W), resampled_stats(reference, W)
    out = {}
    for name in metrics:
        j = STAT_NAMES.index(name)
        d = np.where((sc[:, j] >= 0) & (sr[:, j] >= 0), sc[:, j] - sr[:, j], np.nan)
        out[name] = list(_interval(d, level))
    return {
        "method": "paired bootstrap over images (percentile)",
        "level": level,
        "resamples": resamples,
        "seed": seed,
        "images": len(candidate.image_ids),
        "diff": out,
    }
