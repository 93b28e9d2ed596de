"""What every benchmark script shares: a scratch directory that is removed afterwards unless --keep."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
from pathlib import Path


def benchmark_parser(doc: str) -> argparse.ArgumentParser:
    """The flags every benchmark on the real model and images takes, and --keep."""
    from common.config.parser import SuiteParser  # no prefix matching, did-you-mean, --version

    ap = SuiteParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", required=True, help="the ONNX model")
    ap.add_argument("--images-dir", required=True, help="the images (e.g. ../shared/data/coco/val2017)")
    ap.add_argument("--ann", required=True, help="the annotation file")
    ap.add_argument("--model", default="rtmdet", help="model spec (default: rtmdet)")
    ap.add_argument("--repeats", type=int, default=3, help="alternated repeats (default: 3)")
    add_keep_flag(ap)
    return ap


def add_keep_flag(parser: argparse.ArgumentParser):
    """The benchmark scripts' --keep flag: keep the scratch directory and say where it is."""
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the scratch directory (engines, records) and print where it is (default: removed at the end)",
    )


@contextlib.contextmanager
def scratch_dir(prefix: str, keep: bool = False):
    """A temporary directory for a benchmark's engines and records; removed on exit (also on Ctrl-C or an
    error) unless `keep`."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        if keep:
            print(f"kept: {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)
