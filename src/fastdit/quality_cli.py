"""``fastdit compare A B [--json]``: PSNR / SSIM / LPIPS of video B against video A.

``add_compare(subparsers)`` registers the sub-command and ``cmd_compare(args)`` runs it (the
CLI package adds ``add_compare`` to its command list). Bad input raises
:class:`fastdit.errors.InputError` (a ``UserError``: exit code 2 from the CLI).
"""

from __future__ import annotations

import argparse
import json
import math


def add_compare(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "compare", help="compare two videos (mp4 files or frame folders): PSNR, SSIM, LPIPS",
        description="Quality of video B against video A (the reference): PSNR over all "
                    "pixels, mean SSIM, and LPIPS when its weights are on this machine.")
    p.add_argument("a", help="reference video: an mp4 (.mov, .mkv) or a folder of frame images")
    p.add_argument("b", help="video to compare against A (same frame count and size)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_compare)


def _json_number(value):
    """JSON has no infinity: identical videos print ``"psnr": "inf"``."""
    return "inf" if isinstance(value, float) and math.isinf(value) else value


def cmd_compare(args: argparse.Namespace) -> int:
    from fastdit.quality import compare

    result = compare(args.a, args.b)
    if args.json:
        print(json.dumps({k: _json_number(v) for k, v in result.items()}, indent=2))
        return 0
    lpips = (f"{result['lpips']:.4f}" if result["lpips"] is not None
             else f"n/a ({result['lpips_reason']})")
    print(f"frames: {result['frames']}  PSNR: {result['psnr']:.2f} dB "
          f"(worst frame {result['psnr_worst_frame']:.2f} dB)  SSIM: {result['ssim']:.4f}  "
          f"LPIPS: {lpips}")
    return 0
