"""COCO bbox evaluation done image by image while the run is still inferring; only the accumulation waits for the
last image.

pycocotools evaluates in three steps: per (image, category) IoUs and greedy matching (`evaluateImg`), then per
(category, area range, max detections) the precision/recall curves over all images (`accumulate`), then the 12
means (`summarize`). The first step needs nothing but one image's detections and ground truth, so it runs here
in a thread as each batch's detections arrive (numpy work and the runtime's inference / the simulated device's
sleeps release the GIL to each other, so the matching fills a free core or the waits). After the last image only
the accumulation (vectorised here, the same arithmetic as pycocotools') and pycocotools' own summarize() remain.

Identical to pycocotools by construction, and tested against it on the person subset and on all 80 categories:
- IoU: bbIou's formula (min/max of the box edges in float64, crowd boxes divided by the detection's area);
- matching: detections by score (stable mergesort), the top maxDets[-1]; for each IoU threshold each detection
  takes the unmatched (or crowd) non-ignored ground truth of highest IoU >= threshold, the last of equal ones,
  and an ignored one only when no non-ignored one qualifies, exactly as evaluateImg's loop decides;
- accumulation: per image order of ids, per detection rank < maxDet, stable sort by score, cumulative TP/FP,
  precision made monotone from the right, sampled at the recall thresholds with searchsorted(side='left').
"""

from __future__ import annotations

import contextlib
import io
import os
import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

# Matching runs on groups of at least this many finished images: the vectorised matcher costs about the same per
# group whatever its size, so at batch size 1 images are gathered first.
CHUNK_IMAGES = 16
# Detections of one category gathered into one _Run (the accumulation's form) at a time, while the run infers.
RUN_DETECTIONS = 16384


def _params():
    from pycocotools.cocoeval import Params

    return Params("bbox")  # the reference's own thresholds, recall points, max detections and area ranges


class _GroundTruth:
    """Ground truth of the evaluated categories per image, in the annotation file's order (pycocotools' order)."""

    def __init__(self, annotations: dict, categories):
        keep = set(int(c) for c in categories)
        per_image: dict = {}
        for a in annotations["annotations"]:
            cat = a.get("category_id")
            if cat not in keep:
                continue
            x, y, w, h = (float(v) for v in a["bbox"])
            area = float(a["area"]) if "area" in a else w * h
            per_image.setdefault(a["image_id"], []).append(
                (cat, x, y, w, h, area, bool(a.get("iscrowd", 0)), float(a.get("id", 0)))
            )
        self.by_pair: dict = {}
        for image_id, rows in per_image.items():
            for cat, *rest in rows:
                self.by_pair.setdefault((image_id, cat), []).append(rest)
        self.by_pair = {k: np.array(v, np.float64) for k, v in self.by_pair.items()}  # [G, 7]
        self.cats_of: dict = {}
        for image_id, cat in self.by_pair:
            self.cats_of.setdefault(image_id, []).append(cat)


def match_pairs(dets: list, gts: list, params) -> list:
    """evaluateImg for many (image, category) pairs at once.

    dets[p]: [D, 5] rows (x, y, w, h, score), already in pycocotools' order (stable by score, top maxDets[-1]);
    gts[p]: [G, 7] rows (x, y, w, h, area, iscrowd, id) in file order.
    Returns per pair (matched [A, T, D] bool, ignored [A, T, D] bool, non-ignored ground truth count [A]).
    """
    thr = np.minimum(np.asarray(params.iouThrs, np.float64), 1 - 1e-10)
    rng = np.asarray(params.areaRng, np.float64)
    P, T, A = len(dets), len(thr), len(rng)
    D = max(1, max(len(d) for d in dets))
    G = max(1, max(len(g) for g in gts))
    db = np.zeros((P, D, 4))
    gb = np.zeros((P, G, 7))
    dvalid = np.zeros((P, D), bool)
    gvalid = np.zeros((P, G), bool)
    for p, (d, g) in enumerate(zip(dets, gts)):
        db[p, : len(d)] = d[:, :4]
        dvalid[p, : len(d)] = True
        gb[p, : len(g)] = g
        gvalid[p, : len(g)] = True
    crowd = gb[:, :, 5] != 0
    # bbIou (pycocotools/common/maskApi.c): w = min(x+w) - max(x), the same operations in float64.
    dx, dy, dw, dh = (db[:, :, i, None] for i in range(4))
    gx, gy, gw, gh = (gb[:, None, :, i] for i in range(4))
    iw = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    ih = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    inter = iw * ih
    da, ga = dw * dh, gw * gh
    union = np.where(crowd[:, None, :], da, da + ga - inter)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where((iw > 0) & (ih > 0) & dvalid[:, :, None] & gvalid[:, None, :], inter / union, 0.0)
    garea, darea = gb[:, :, 4], db[:, :, 2] * db[:, :, 3]
    lo, hi = rng[None, :, 0, None], rng[None, :, 1, None]
    gt_ignored = (crowd[:, None, :] | (garea[:, None, :] < lo) | (garea[:, None, :] > hi)) & gvalid[:, None, :]
    det_outside = (darea[:, None, :] < lo) | (darea[:, None, :] > hi)  # [P, A, D]

    matched_id = np.zeros((P, A, T, D))
    det_ignored = np.zeros((P, A, T, D), bool)
    gt_taken = np.zeros((P, A, T, G), bool)
    # Only detections overlapping some ground truth by at least the lowest threshold can match anything: loop over
    # those (in score order), every pair, area range and threshold at once.
    candidate = dvalid & (iou >= thr.min()).any(axis=2)
    n_candidates = candidate.sum(axis=1)
    K = int(n_candidates.max()) if P else 0
    order = np.argsort(~candidate, axis=1, kind="stable")[:, :K]
    eligible_gt = gvalid[:, None, None, :]
    ignored4 = gt_ignored[:, :, None, :]
    crowd4 = crowd[:, None, None, :]
    thr4 = thr[None, None, :, None]
    for k in range(K):
        # Only the pairs that have a k-th candidate (the others can match nothing more): most pairs have one or two
        # candidates and a few have dozens, so the later steps concern few pairs.
        live = np.flatnonzero(n_candidates > k)
        full = len(live) == P
        d = order[live, k]
        v = iou[live, d][:, None, None, :]  # [p, 1, 1, G]
        taken, crowds = (gt_taken, crowd4) if full else (gt_taken[live], crowd4[live])
        ok = (v >= thr4) & (eligible_gt if full else eligible_gt[live]) & (~taken | crowds)
        ignored = ignored4 if full else ignored4[live]
        best = []
        for group in (ok & ~ignored, ok & ignored):  # non-ignored ground truth first, as evaluateImg sorts it
            score = np.where(group, v, -1.0)
            best.append((G - 1 - np.argmax(score[..., ::-1], axis=-1), group.any(axis=-1)))  # last of the best
        (m1, f1), (m2, f2) = best
        m = np.where(f1, m1, m2)
        pp, aa, tt = np.nonzero(f1 | f2)
        if not len(pp):
            continue
        mm = m[pp, aa, tt]
        dd = d[pp]
        pp = live[pp]
        gt_taken[pp, aa, tt, mm] = True
        matched_id[pp, aa, tt, dd] = gb[pp, mm, 6]
        det_ignored[pp, aa, tt, dd] = gt_ignored[pp, aa, mm]
    # pycocotools tests a match by the matched ground truth's id being non-zero
    det_ignored |= (matched_id == 0) & det_outside[:, :, None, :]
    matched = matched_id != 0
    npig = (gvalid[:, None, :] & ~gt_ignored).sum(axis=2)
    return [(matched[p, :, :, : len(d)], det_ignored[p, :, :, : len(d)], npig[p]) for p, d in enumerate(dets)]


class _Pairs(NamedTuple):
    """One category's per-pair results of consecutive pairs, in image order, as whole arrays."""

    scores: np.ndarray  # [N]
    sizes: np.ndarray  # [pairs] detections of each pair
    matched: np.ndarray  # [A, T, N]
    ignored: np.ndarray  # [A, T, N]
    npig: np.ndarray  # [pairs, A] non-ignored ground truth
    by_score: np.ndarray  # [N] the detections by descending score, stably


class _Run(NamedTuple):
    """What the accumulation needs of consecutive _Pairs of one category, which is much smaller than the pairs'
    dense arrays: the matched (detection, row) cells, and per area range which detections count when unmatched.

    An unmatched detection is ignored exactly when it lies outside the area range (match_pairs), so `open_valid`
    is its validity at any threshold where it is unmatched; a detection matched at every threshold has no such
    one and gets False, which the accumulation's counting cancels out (it counts the unmatched valid detections
    as the open_valid ones less the matched open_valid ones). A matched cell is kept only if it is a true positive
    or open_valid: most matched ignored cells are neither (matched to ground truth of another area range)."""

    scores: np.ndarray  # [N]
    sizes: np.ndarray  # [pairs]
    npig: np.ndarray  # [pairs, A]
    by_score: np.ndarray  # [N]
    position: np.ndarray  # [N] each detection's place in by_score
    open_valid: np.ndarray  # [A, N]
    hit_row: np.ndarray  # [H] the kept matched cells' (area range, threshold) row (area * T + threshold) ...
    hit_det: np.ndarray  # [H] ... detection ...
    hit_tp: np.ndarray  # [H] ... and whether it is a true positive; in (row, score position) order


def _gathered(entries: list) -> _Pairs:
    """Per-pair results (image_id, scores, matched, ignored, npig), in image order, as one _Pairs."""
    scores = np.concatenate([e[1] for e in entries])
    return _Pairs(
        scores,
        np.array([len(e[1]) for e in entries], np.int64),
        np.concatenate([e[2] for e in entries], axis=2),
        np.concatenate([e[3] for e in entries], axis=2),
        np.array([e[4] for e in entries], np.int64),
        np.argsort(-scores, kind="mergesort"),
    )


def _merged_order(scores: list, orders: list) -> np.ndarray:
    """The score order of consecutive arrays joined, from each one's own: a stable sort of runs already sorted
    (about half the time of sorting the scores afresh). Ties stay in array order, then in each array's order,
    which is the joined arrays' order, as a stable sort of them keeps it."""
    if len(orders) == 1:
        return orders[0]
    starts = np.cumsum([0] + [len(x) for x in scores[:-1]])
    runs = np.concatenate([order + start for order, start in zip(orders, starts)])
    return runs[np.argsort(-np.concatenate(scores)[runs], kind="mergesort")]


def _positions(order):
    """Each item's position in `order`, a permutation."""
    position = np.empty(len(order), np.int64)
    position[order] = np.arange(len(order))
    return position


def _run_of(groups: list) -> _Run:
    """Consecutive _Pairs of one category as one _Run, made from all of them at once (with 80 categories a
    chunk's _Pairs of one category hold a few dozen detections: per-call costs would dominate)."""
    scores = np.concatenate([g.scores for g in groups])
    matched = np.concatenate([g.matched for g in groups], axis=2)
    ignored = np.concatenate([g.ignored for g in groups], axis=2)
    A, T, N = matched.shape
    by_score = _merged_order([g.scores for g in groups], [g.by_score for g in groups])
    open_valid = (~matched & ~ignored).any(axis=1)
    cell, det = np.nonzero(matched.reshape(A * T, N))
    tp = ~ignored.reshape(A * T, N)[cell, det]
    keep = tp | open_valid[cell // T, det]
    return _assembled(groups, scores, by_score, open_valid, cell[keep], det[keep], tp[keep])


def _assembled(parts: list, scores, by_score, open_valid, cell, det, tp, presorted_runs: bool = False) -> _Run:
    """The _Run of consecutive `parts` (_Pairs or _Runs) with these detections and kept cells, the cells put in
    (row, score position) order: unique keys, so any sort gives that order; a stable one merges runs of cells
    already in order (the parts' own, when they are _Runs) fastest."""
    position = _positions(by_score)
    key = cell.astype(np.int64) * len(scores) + position[det]
    order = np.argsort(key, kind="mergesort" if presorted_runs else None)
    return _Run(
        scores,
        np.concatenate([p.sizes for p in parts]),
        np.concatenate([p.npig for p in parts]),
        by_score,
        position,
        open_valid,
        cell[order].astype(np.int32),
        det[order],
        tp[order],
    )


def _joined(runs: list) -> _Run:
    """Consecutive _Runs of one category as one. The kept cells stay in (row, score position) order the same way
    as the detections' order merges: each run's are in that order already, since a run's detections keep their
    order among the joined ones."""
    if len(runs) == 1:
        return runs[0]
    scores = np.concatenate([r.scores for r in runs])
    by_score = _merged_order([r.scores for r in runs], [r.by_score for r in runs])
    starts = np.cumsum([0] + [len(r.scores) for r in runs[:-1]])
    return _assembled(
        runs,
        scores,
        by_score,
        np.concatenate([r.open_valid for r in runs], axis=1),
        np.concatenate([r.hit_row for r in runs]),
        np.concatenate([r.hit_det + start for r, start in zip(runs, starts)]),
        np.concatenate([r.hit_tp for r in runs]),
        presorted_runs=True,
    )


def _curves(block: _Run, counted_mask, row_of_cell, row_area, npig, rec_thrs):
    """pycocotools' precision / recall curves of one category and max-detections setting, sampled at the recall
    thresholds, for its (area range, IoU threshold) rows: `counted_mask` [N] which detections of the block's score
    order count (rank < maxDets, None: all); row_of_cell the row of each (area range, threshold) cell (-1: not
    evaluated); row_area [rows] their area range; npig [rows].

    (precision [rows, R], scores [rows, R], final recall [rows]), the numbers pycocotools computes from the
    full cumulative TP / FP curves, taken from the true positives alone: recall only rises at a true positive,
    so the first position whose recall reaches a threshold is a true positive (position 0 for the threshold 0),
    and precision only rises there too, so its monotone envelope at a true positive is the largest precision
    at this or any later true positive. The values are computed by the same float64 operations, so they are
    identical (tp / (tp + fp + eps) with tp + fp the count of non-ignored detections up to that position).

    That count is the true positives so far plus the valid unmatched detections so far. Only the matched cells
    are visited one by one (a few per ground truth); the unmatched ones are counted per area range, not per row,
    with one cumulative sum of open_valid in score order, less the open_valid matched ones of the row."""
    R, n_rows = len(rec_thrs), len(row_area)
    pos = block.position[block.hit_det]
    row = row_of_cell[block.hit_row]
    if counted_mask is None:
        inds = block.by_score
        keep = row >= 0
    else:  # positions among the counted detections, which keep their order
        inds = block.by_score[counted_mask]
        keep = counted_mask[pos] & (row >= 0)
        pos = np.cumsum(counted_mask, dtype=np.int64)[pos] - 1
    # every row's matched cells in score order: the block keeps them in (cell, position) order, which a subset
    # of the detections and the rows' numbering (by area range, then threshold) both keep
    row, pos, det, tp = row[keep], pos[keep], block.hit_det[keep], block.hit_tp[keep]
    area = row_area[row]
    open_here = block.open_valid[area, det]
    row_start = np.searchsorted(row, np.arange(n_rows))
    before = np.concatenate([[0], np.cumsum(open_here)])
    open_matched = before[1:] - before[row_start[row]]  # the row's open_valid matched cells up to this one
    open_sorted = np.cumsum(np.take(block.open_valid.view(np.uint8), inds, axis=1), axis=1, dtype=np.int32)
    row, pos = row[tp], pos[tp]  # the true positives: per row, in score order
    n_tp = np.bincount(row, minlength=n_rows)
    first = np.concatenate([[0], np.cumsum(n_tp)[:-1]])
    kth = np.arange(len(row)) - first[row]  # 0-based index of each true positive in its row
    counted = kth + 1 + open_sorted[area[tp], pos] - open_matched[tp]  # tp + fp there
    tp_count = (kth + 1).astype(np.float64)
    pr = tp_count / (counted.astype(np.float64) + np.spacing(1))
    rc = tp_count / npig[row]
    q = np.zeros((n_rows, R))  # a row without a true positive: precision 0 everywhere
    ss = np.zeros((n_rows, R))
    for r in np.flatnonzero(n_tp):
        b, e = first[r], first[r] + n_tp[r]
        env = np.maximum.accumulate(pr[b:e][::-1])[::-1]
        kr = np.searchsorted(rc[b:e], rec_thrs, side="left")
        ok = kr < e - b
        safe = np.where(ok, kr, 0)
        q[r] = np.where(ok, env[safe], 0.0)
        ss[r] = np.where(ok, block.scores[inds[pos[b:e][safe]]], 0.0)
    ss[:, rec_thrs <= 0] = block.scores[inds[0]]  # reached at position 0, whatever detection is there
    return q, ss, n_tp / npig


def accumulate(entries_by_cat: dict, image_ids, categories, params, blocks_by_cat: dict | None = None) -> dict:
    """pycocotools' accumulate() on per-pair results: {'precision', 'recall', 'scores'} arrays of its shapes.

    `blocks_by_cat` ({category: [_Run or _Pairs of consecutive pairs]}, in increasing image order), when given,
    holds the pairs of exactly `image_ids`, already gathered while the run inferred, and is used instead of
    `entries_by_cat`: it spares the 80 categories of a 5000-image run ~2 s of joining ~390k small arrays after the
    last image. The (category, max detections) curves run on up to two threads."""
    thr, rec_thrs = np.asarray(params.iouThrs), np.asarray(params.recThrs)
    T, R, K, A, M = len(thr), len(rec_thrs), len(categories), len(params.areaRng), len(params.maxDets)
    precision, recall, scores_out = -np.ones((T, R, K, A, M)), -np.ones((T, K, A, M)), -np.ones((T, R, K, A, M))
    wanted = set(int(i) for i in image_ids)
    tasks = []  # (k, m, evaluated areas, block, which detections count, each cell's row, rows' area and npig)
    for k, cat in enumerate(categories):
        if blocks_by_cat is not None:
            blocks = blocks_by_cat.get(cat)
            if not blocks:
                continue
            block = _joined([b if isinstance(b, _Run) else _run_of([b]) for b in blocks])
        else:
            entries = sorted((e for e in entries_by_cat.get(cat, ()) if e[0] in wanted), key=lambda e: e[0])
            if not entries:
                continue
            block = _run_of([_gathered(entries)])
        # each detection's rank within its (image, category) pair, for all pairs at once
        rank = np.arange(len(block.scores)) - np.repeat(np.cumsum(block.sizes) - block.sizes, block.sizes)
        npig = block.npig.sum(axis=0)  # [A]
        areas = np.flatnonzero(npig > 0)
        if not len(areas):
            continue
        # rows: (evaluated area range, threshold); cells of the other area ranges are left out
        row_of_area = np.full(A, -1, np.int64)
        row_of_area[areas] = np.arange(len(areas)) * T
        row_of_cell = np.where(row_of_area[:, None] >= 0, row_of_area[:, None] + np.arange(T), -1).ravel()
        row_area = np.repeat(areas, T)
        row_npig = npig[row_area]
        # One stable sort for every maxDets: the stable order of a subset is the subsequence of the stable order
        # of the whole, so each setting keeps the detections of rank < maxDets in that order.
        ranked = rank[block.by_score]
        for m, max_det in enumerate(params.maxDets):
            counted = ranked < max_det
            if not counted.any():  # pycocotools: recall 0, precision and scores 0 at every threshold
                recall[:, k, areas, m] = 0.0
                precision[:, :, k, areas, m] = scores_out[:, :, k, areas, m] = 0.0
                continue
            tasks.append((k, m, areas, block, None if counted.all() else counted, row_of_cell, row_area, row_npig))

    def curves(task):
        return _curves(*task[3:], rec_thrs)

    # the largest first (the last maxDets counts every detection): the two threads end together
    tasks.sort(key=lambda task: -len(task[3].hit_det) if task[4] is None else -int(task[4].sum()))

    workers = min(len(tasks), os.cpu_count() or 1, 2)
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(curves, tasks))
    else:
        results = [curves(task) for task in tasks]
    row_thr = np.arange(T)
    for (k, m, areas, *_), (q, ss, rc_last) in zip(tasks, results):
        for i, a in enumerate(areas):
            rows = slice(i * T, (i + 1) * T)
            recall[row_thr, k, a, m] = rc_last[rows]
            precision[row_thr, :, k, a, m] = q[rows]
            scores_out[row_thr, :, k, a, m] = ss[rows]
    return {"precision": precision, "recall": recall, "scores": scores_out, "counts": [T, R, K, A, M]}


def summarize(evaluation: dict, image_ids, categories, params) -> np.ndarray:
    """The 12 stats by pycocotools' own summarize() on the accumulated arrays."""
    from pycocotools.cocoeval import COCOeval

    ev = COCOeval(iouType="bbox")
    ev.params = params
    params.imgIds, params.catIds = sorted(set(int(i) for i in image_ids)), list(categories)
    ev.eval = dict(evaluation, params=params)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.summarize()
    return ev.stats


class IncrementalCocoEval:
    """add() detections, complete() images that will get no more of them; result() -> the 12 stats.

    The matching runs in a thread of its own, fed through a queue, so add() and complete() return at once.
    """

    def __init__(self, annotations: dict, categories):
        self.categories = [int(c) for c in categories]
        self._annotations = annotations
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._matched_images: set = set()
        # category -> [_gathered() of one matched chunk's pairs], in matching order, and those pairs' image ids
        self._blocks: dict = {}
        self._block_ids: dict = {}
        # category -> its _Pairs not yet in a _Run, and [(groups, _Run)]: groups of ~RUN_DETECTIONS detections made
        # _Runs, joined as a binary counter (two runs of as many groups become one), so each detection is joined
        # ~log2(groups) times while the run infers and the accumulation after the last image joins a handful
        self._ungrouped: dict = {}
        self._ungrouped_n: dict = {}  # their detections
        self._runs: dict = {}
        self._entries: dict | None = None  # made from the blocks when asked for
        self._in_order = True  # every image matched after every smaller id (so the blocks are in image order)
        self._last_id = None
        # started by the first message, so an evaluator that is never fed (a run failing early) leaves no thread
        self._thread = threading.Thread(target=self._run, name="incremental-coco-eval", daemon=True)

    def _put(self, message):
        if not self._thread.is_alive() and self._thread.ident is None:
            self._thread.start()
        self._queue.put(message)

    def add(self, rows: np.ndarray):
        """Rows (image_id, x, y, w, h, score, category) of evaluated categories (DetectionStore's layout)."""
        if len(rows):
            self._put(("add", np.array(rows, np.float64)))

    def complete(self, image_ids):
        """These images get no more detections: the background thread may match them now."""
        if len(image_ids):
            self._put(("complete", [int(i) for i in image_ids]))

    def result(self, image_ids) -> np.ndarray:
        """The 12 COCO stats over image_ids once every queued message is matched; an error of the
        background thread is raised here."""
        self._put(("finish", sorted(set(int(i) for i in image_ids))))
        self._thread.join()
        if self._error is not None:
            raise self._error
        whole = self._in_order and self._matched_images == set(int(i) for i in image_ids)
        runs = self._joined_runs() if whole else None
        self.accumulated = accumulate({} if whole else self.entries, image_ids, self.categories, self.params, runs)
        return summarize(self.accumulated, image_ids, self.categories, self.params)

    def _joined_runs(self) -> dict:
        """{category: [its _Runs, in image order]} for accumulate()."""
        runs = {cat: [run for _, run in counter] for cat, counter in self._runs.items()}
        for cat, pairs in self._ungrouped.items():
            if pairs:
                runs.setdefault(cat, []).append(_run_of(pairs))
        return runs

    @property
    def entries(self) -> dict:
        """The per-pair matches after result(): {category: [(image_id, scores, matched, ignored, npig)]}
        (common/evaluate/bootstrap.py resamples them), views of the blocks the matching thread gathered."""
        if self._entries is None:
            entries: dict = {}
            for cat, blocks in self._blocks.items():
                mine = entries.setdefault(cat, [])
                for ids, p in zip(self._block_ids[cat], blocks):
                    ends = np.cumsum(p.sizes).tolist()
                    for image_id, b, e, n in zip(ids, [0] + ends[:-1], ends, p.npig):
                        mine.append((image_id, p.scores[b:e], p.matched[:, :, b:e], p.ignored[:, :, b:e], n))
            self._entries = entries
        return self._entries

    def close(self):
        """Stop the thread without a result (a failed run)."""
        if self._thread.is_alive():
            self._queue.put(("stop", None))
            self._thread.join()

    # -- the matching thread

    def _run(self):
        try:
            self.params = _params()
            self._gt = _GroundTruth(self._annotations, self.categories)
            self._pending: dict = {}  # image_id -> [row arrays]
            ready: list = []
            while True:
                kind, value = self._queue.get()
                if kind == "add":
                    order = np.argsort(value[:, 0], kind="stable")
                    value = value[order]
                    ids, starts = np.unique(value[:, 0], return_index=True)
                    for image_id, part in zip(ids.astype(np.int64).tolist(), np.split(value, starts[1:])):
                        if image_id in self._matched_images:
                            raise RuntimeError(f"detections for image {image_id} arrived after it was completed")
                        self._pending.setdefault(image_id, []).append(part)
                elif kind == "complete":
                    ready.extend(value)
                    if len(ready) >= CHUNK_IMAGES:
                        self._match(ready)
                        ready = []
                elif kind == "finish":
                    self._match(ready + [i for i in value if i not in self._matched_images])
                    return
                else:
                    return
        except BaseException as exc:  # noqa: BLE001 - raised again by result() in the caller's thread
            self._error = exc

    def _match(self, image_ids):
        max_det = self.params.maxDets[-1]
        keys, dets, gts = [], [], []
        empty_d, empty_g = np.zeros((0, 5)), np.zeros((0, 7))
        for image_id in image_ids:
            if image_id in self._matched_images:
                continue
            self._matched_images.add(image_id)
            if self._last_id is not None and image_id <= self._last_id:
                self._in_order = False
            self._last_id = image_id
            parts = self._pending.pop(image_id, None)
            rows = np.concatenate(parts) if parts else np.zeros((0, 7))
            # by category, then by score, stably (np.lexsort is): every pair's detections in pycocotools' order
            # (the image's order, then a stable sort by score) at once, instead of a mask and a sort per category
            rows = rows[np.lexsort((-rows[:, 5], rows[:, 6]))]
            det_cats, starts, counts = np.unique(rows[:, 6], return_index=True, return_counts=True)
            span = {
                int(c): (b, b + min(k, max_det)) for c, b, k in zip(det_cats.tolist(), starts.tolist(), counts.tolist())
            }
            cats = set(self._gt.cats_of.get(image_id, ()))
            cats.update(span)
            for cat in sorted(cats):
                keys.append((image_id, cat))
                b_e = span.get(cat)
                dets.append(rows[b_e[0] : b_e[1], 1:6] if b_e else empty_d)
                gts.append(self._gt.by_pair.get((image_id, cat), empty_g))
        if not keys:
            return
        results = [None] * len(keys)
        T, A = len(self.params.iouThrs), len(self.params.areaRng)
        rng = np.asarray(self.params.areaRng, np.float64)
        heavy, no_gt = [], []
        for n, (d, g) in enumerate(zip(dets, gts)):
            if len(d) and len(g):
                heavy.append(n)
            elif len(d):
                no_gt.append(n)
            else:  # ground truth and no detection: only its non-ignored count matters
                g_ignored = (g[None, :, 5] != 0) | (g[None, :, 4] < rng[:, :1]) | (g[None, :, 4] > rng[:, 1:])
                results[n] = (np.zeros((A, T, 0), bool), np.zeros((A, T, 0), bool), (~g_ignored).sum(axis=1))
        if no_gt:
            # Detections without ground truth match nothing: only the area ranges decide what is ignored. All such
            # pairs at once (with 80 classes most pairs are these), each pair a slice of the result.
            d = np.concatenate([dets[n] for n in no_gt])
            area = d[:, 2] * d[:, 3]
            ignored = np.repeat(((area < rng[:, :1]) | (area > rng[:, 1:]))[:, None, :], T, axis=1)
            matched = np.zeros(ignored.shape, bool)
            ends = np.cumsum([len(dets[n]) for n in no_gt]).tolist()
            for n, lo, hi in zip(no_gt, [0] + ends[:-1], ends):
                results[n] = (matched[:, :, lo:hi], ignored[:, :, lo:hi], np.zeros(A, np.int64))
        # Pairs of similar size matched together: padding every pair to the largest would multiply the work.
        heavy.sort(key=lambda n: (len(gts[n]), len(dets[n])))
        group: list = []
        for n in heavy + [None]:
            if n is not None and (not group or (len(group) < 512 and len(gts[n]) <= 2 * max(4, len(gts[group[0]])))):
                group.append(n)
                continue
            if group:
                for i, res in zip(group, match_pairs([dets[i] for i in group], [gts[i] for i in group], self.params)):
                    results[i] = res
            group = [n]
        by_cat: dict = {}
        for (image_id, cat), d, (matched, ignored, npig) in zip(keys, dets, results):
            by_cat.setdefault(cat, []).append((image_id, d[:, 4], matched, ignored, npig))
        # The chunk's pairs of each category gathered into whole arrays here, while the run still infers, and every
        # ~RUN_DETECTIONS of them into a _Run: the accumulation after the last image joins a few runs instead of
        # every pair's small arrays.
        for cat, pairs in by_cat.items():
            block = _gathered(pairs)
            self._blocks.setdefault(cat, []).append(block)
            self._block_ids.setdefault(cat, []).append([pair[0] for pair in pairs])
            ungrouped = self._ungrouped.setdefault(cat, [])
            ungrouped.append(block)
            self._ungrouped_n[cat] = self._ungrouped_n.get(cat, 0) + len(block.scores)
            if self._ungrouped_n[cat] < RUN_DETECTIONS:
                continue
            counter = self._runs.setdefault(cat, [])
            counter.append((1, _run_of(ungrouped)))
            ungrouped.clear()
            self._ungrouped_n[cat] = 0
            while len(counter) > 1 and counter[-2][0] == counter[-1][0]:
                (n, first), (_, second) = counter[-2:]
                counter[-2:] = [(2 * n, _joined([first, second]))]
