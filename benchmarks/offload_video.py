"""A whole Wan2.2-T2V-A14B video through the real pipeline at an emulated 24 GB card.

    python benchmarks/offload_video.py --out /tmp/offload-video.json                  # GPU (H200)
    python benchmarks/offload_video.py --tiny --out /tmp/offload-video.json           # CPU, seconds

1. The model folder, written once to ``--work-dir`` (reused when there; ``--write-only``): a
   random Wan2.2-T2V-A14B in diffusers layout (``transformer``, ``transformer_2``,
   ``boundary_ratio`` 0.875; fastdit's A14B config in bf16; the Wan2.1 VAE, fp32; UMT5-XXL's
   shape (width 4096, 256,384 embedding rows, ``--text-layers`` 24 layers: 11.4 GB) with the tiny
   tokenizer; UniPC with the A14B's shift), made on the GPU in ``<folder>.partial``, renamed when
   complete. The encoder is full size because the plan depends on it: with 4 layers the 24 GB
   fp8 plan keeps every block resident and nothing streams. **The experts share their
   weights**: one 14B transformer is written (28.6 GB; two would not fit the GPU machine's 64 GB
   disk) and ``transformer_2/`` holds hard links to its files (symlinks where hard links are
   refused; the loader takes both). fastdit still loads two experts (two host stores, two
   streamers): memory and speed are those of two experts, the values are equal
   (``"experts_share_weights": true``, from the inodes), and the second is read from the page
   cache. ``--tiny``: ``make_tiny_model(task="a14b")``, linked the same way.
2. The run, in a child process (its host memory is its own): ``set_per_process_memory_fraction
   (budget / total)`` before anything loads (no GPU setting changes); ``fastdit.load(folder,
   max_gpu_memory=, weights=, plan_video=(H, W, F))`` (lazy host loading; the plan printed and
   recorded, beside the released model's plan at the same budget); ``pipe.generate(...)`` with
   the model's guidance (4.0 / 3.0): text encoder, the guided steps through both streamed
   experts and the switch, VAE decode. Step times from a progress callback after a device sync;
   each step's expert read off the streamers, next to the plan of the scheduler's timesteps.
   ``--tiny``: the CPU has nothing to emulate, but the planner takes a budget there: the
   smallest it accepts (bisection), which streams.

``--lora-rank R`` runs the 4-step recipe instead (a random rank-R LoRA per expert in LightX2V's
layout, merged as the blocks stream, ``preset="lightx2v-4step"``: timesteps 1000/750/500/250,
guidance off, the experts switching at step 2); ``--quantize fp8`` adds the precision setting
(fp8 products on the streamed e4m3 weights, 8-bit self-attention).

The JSON is rewritten after every phase (a run stopped by a time cap keeps what it measured):
load seconds, the plan, ``result.timings``, seconds per step (median, per expert, after the
switch), bytes copied, peak GPU memory, host VmHWM / RssAnon (peak of per-step samples) /
RssFile / RssShmem, both stores' pinned bytes, where pinned pages show in RSS (a 256 MB probe),
"anonymous RSS plus pinned" (issue 14) beside its 36 GB target, the frames' shape and
finiteness. ``host_estimate_with_umt5_xxl_gb`` swaps our encoder for the released one by the
two plans (equal to the measured figure at 24 layers).

H200 time, estimated (not measured): the folder (41 GB of safetensors) 2-3 min, first run only
(the free space is checked); child start and load (UMT5 11 GB to host memory, two experts
quantised to fp8 on the GPU block by block) 1-1.5 min; 40 steps at ~5.9 s (``offload.py``'s fp8
experts at 24 GB, h200-run9) ~4 min; decode 15-30 s: 5.5-6.5 min with the folder there, 8-9.5
with the write, so write it in a call of its own (``--write-only``) when calls are capped at 10.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling offload.py
from offload import GB, gpu_peaks, host_memory, set_budget  # noqa: E402

PROMPT = "A cat and a dog baking a cake together in a kitchen, sunlight streaming through the window."
REPO = Path(__file__).resolve().parents[1]
HOST_TARGET_GB = 36
UMT5_VOCAB = 256_384  # UMT5-XXL's embedding rows (the tiny tokenizer uses the first few hundred)
UMT5_LAYER_BYTES = 386_000_000  # one UMT5-XXL layer in bf16


def folder_bytes(text_layers: int) -> int:
    """Disk the folder needs: 14B bf16 (28.6 GB), UMT5 (2.1 GB embedding + its layers), VAE, room."""
    return int(28.6 * GB + 2.1 * GB + text_layers * UMT5_LAYER_BYTES + 1.5 * GB)


class Report:
    """The JSON file, rewritten after every phase (one line with a timestamp each)."""

    def __init__(self, path: str, data: dict | None = None):
        self.path, self.data = Path(path), data if data is not None else {}

    @classmethod
    def read(cls, path: str) -> "Report":
        return cls(path, json.loads(Path(path).read_text()))

    def save(self, phase: str, **parts) -> None:
        self.data.update(parts)
        self.data.setdefault("phases", []).append({"phase": phase, "at": datetime.datetime.now().isoformat()})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=1))
        print(f"[offload-video {time.strftime('%H:%M:%S')}] {phase} (written to {self.path})", flush=True)


# ---------------------------------------------------------------------------------------
# The model folder
# ---------------------------------------------------------------------------------------
def share_expert_weights(folder: Path) -> str:
    """``transformer_2/`` := links to ``transformer/``'s files, named in model_index.json;
    returns the kind of link made ("hard", or "symbolic" where hard links are refused)."""
    source, target = folder / "transformer", folder / "transformer_2"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir()
    kind = "hard"
    for file in sorted(source.iterdir()):
        try:
            if kind == "hard":
                os.link(file, target / file.name)
        except OSError:
            kind = "symbolic"
        if kind == "symbolic":  # relative: the folder is renamed after
            os.symlink(os.path.join("..", "transformer", file.name), target / file.name)
    index_path = folder / "model_index.json"
    index = json.loads(index_path.read_text())
    index.update(transformer_2=["diffusers", "WanTransformer3DModel"], boundary_ratio=0.875)
    index_path.write_text(json.dumps(index, indent=2) + "\n")
    return kind


def experts_share_weights(folder: Path) -> bool:
    """Whether every file of ``transformer_2/`` is the same file (inode) as ``transformer/``'s."""
    first, second = folder / "transformer", folder / "transformer_2"
    names = sorted(p.name for p in first.iterdir())
    return names == sorted(p.name for p in second.iterdir()) and all(
        os.path.samefile(first / n, second / n) for n in names)


def write_a14b(folder: Path, args) -> None:
    """The random A14B folder without ``transformer_2`` (see the module docstring)."""
    import torch
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    from fastdit.models.wan.configs import get_config
    from fastdit.pipelines import tiny
    from fastdit.pipelines.loading import quiet_libraries
    from fastdit.pipelines.spec import KNOWN_MODELS

    quiet_libraries()  # no progress bars in the log
    device = torch.device(args.device if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    tokenizer = tiny.make_tokenizer()
    with torch.device(device):  # random init on the GPU is seconds, on the CPU minutes
        text = UMT5EncoderModel._from_config(UMT5Config(
            vocab_size=UMT5_VOCAB, d_model=4096, d_kv=64, d_ff=10240, num_layers=args.text_layers, num_heads=64,
            relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
            dense_act_fn="gelu_new", tie_word_embeddings=False), dtype=torch.bfloat16)
        vae = AutoencoderKLWan()  # diffusers' defaults are the Wan2.1 VAE (z_dim 16); fp32 as shipped
        config = get_config("Wan2.2-T2V-A14B").to_diffusers_config()
        transformer = WanTransformer3DModel(**config).to(torch.bfloat16)  # fp32 init (57 GB), then bf16
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                        num_train_timesteps=1000,
                                        flow_shift=KNOWN_MODELS["Wan2.2-T2V-A14B"].flow_shift)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text, vae=vae, scheduler=scheduler,
                       transformer=transformer, transformer_2=None, boundary_ratio=0.875)
    pipe.save_pretrained(str(folder), max_shard_size="5GB")
    del pipe, text, vae, transformer
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the child gets the device; this process keeps only its context


def build_model(args) -> tuple[Path, dict]:
    """The folder (written unless there) and what the report says about it."""
    name = "tiny-a14b-shared" if args.tiny else f"Wan2.2-T2V-A14B-random-{args.text_layers}l-shared"
    folder = Path(args.work_dir) / name
    info = {"path": str(folder), "reused": (folder / "model_index.json").is_file()}
    if not info["reused"]:
        Path(args.work_dir).mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(args.work_dir).free
        if not args.tiny and free < folder_bytes(args.text_layers):
            raise SystemExit(f"{args.work_dir} has {free / GB:.1f} GB free; the folder needs about "
                             f"{folder_bytes(args.text_layers) / GB:.0f} GB (another --work-dir, or --text-layers 4)")
        tmp = folder.with_name(folder.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        start = time.perf_counter()
        if args.tiny:
            from fastdit.pipelines.tiny import make_tiny_model

            make_tiny_model(tmp, task="a14b", force=True)
        else:
            write_a14b(tmp, args)
        info["link"] = share_expert_weights(tmp)
        os.replace(tmp, folder)
        info["write_s"] = time.perf_counter() - start
    else:
        info["link"] = "symbolic" if (folder / "transformer_2" / "config.json").is_symlink() else "hard"
    files = {(p.stat().st_dev, p.stat().st_ino): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    info.update(bytes_on_disk_gb=sum(files.values()) / GB, disk_free_gb=shutil.disk_usage(folder).free / GB)
    return folder, info


# ---------------------------------------------------------------------------------------
# The run (child process)
# ---------------------------------------------------------------------------------------
def tiny_budget(folder: Path, args) -> int:
    """The smallest budget the planner accepts for the tiny model at the run's size."""
    import torch

    from fastdit.errors import UserError
    from fastdit.pipelines import memory
    from fastdit.pipelines.spec import inspect_model

    sizes = memory.sizes_for_spec(inspect_model(folder), torch.float32, args.weights)
    video, low, high = memory.VideoSize(args.height, args.width, args.frames), 1, 1 << 40
    while low < high:  # feasibility is monotone: the reserve grows by 5% of the budget only
        middle = (low + high) // 2
        try:
            memory.plan_memory(sizes, middle, video)
            high = middle
        except UserError:
            low = middle + 1
    return low


def pinned_probe(device) -> dict:
    """Which RSS field 256 MB of pinned host memory (torch's allocator) lands in."""
    import torch

    if device.type != "cuda":
        return {}
    before = host_memory()
    probe = torch.empty(256 * 2**20, dtype=torch.uint8, pin_memory=True)
    probe.fill_(1)
    after = host_memory()
    grown = {k: (after[k] - before.get(k, 0.0)) * GB / 2**20 for k in ("RssAnon", "RssFile", "RssShmem") if k in after}
    del probe
    return {"probe_mb": 256, "rss_growth_mb": grown,
            "counted_in": max(grown, key=grown.get) if grown and max(grown.values()) > 128 else None}


def host_stores(pipe, device) -> dict:
    """The experts' host stores (pinned or not) and device pools, and torch's pinned figures."""
    import torch

    experts = [m for m in pipe.experts if hasattr(m, "streamer")]
    out = {"streamed_experts": len(experts)}
    if experts:
        regions = {id(m.streamer.region): m.streamer.region for m in experts}
        out.update(separate_host_stores=len({id(m.streamer.store) for m in experts}) == len(experts),
                   pinned=all(m.streamer.store.pinned for m in experts),
                   host_store_gb=sum(m.streamer.store.nbytes for m in experts) / GB,
                   host_store_allocated_gb=sum(m.streamer.store.allocated_bytes for m in experts) / GB,
                   device_pool_gb=sum(r.nbytes for r in regions.values()) / GB, shared_pool=len(regions) == 1)
    stats = getattr(torch.cuda, "host_memory_stats", None)
    if device.type == "cuda" and stats is not None:  # the key names differ between torch releases
        out["torch_pinned_gb"] = {k: v / GB for k, v in stats().items()
                                  if isinstance(v, (int, float)) and k.endswith(("bytes.current", "bytes.peak"))}
    return out


def describe_plan(pipe) -> dict:
    """The pipeline's memory plan: its fields (bytes), its text, and the pipeline's own offload mode."""
    plan = pipe.memory_plan
    return {"text": None} if plan is None else {**dataclasses.asdict(plan), "text": plan.describe(),
                                                "streams": plan.streams, "pipeline_offload": pipe.offload}


def released_model_plan(pipe, budget: int | None, args) -> dict | None:
    """The plan the released A14B (UMT5-XXL of 24 layers) would get at this budget and size,
    beside ours: a smaller text encoder can leave room for more resident blocks."""
    import torch

    from fastdit.pipelines import memory

    if args.tiny or budget is None or pipe.memory_plan is None:
        return None
    sizes = memory.sizes_for_named("Wan2.2-T2V-A14B", torch.bfloat16, args.weights)
    plan = memory.plan_memory(sizes, budget, memory.VideoSize(args.height, args.width, args.frames))
    ours = pipe.memory_plan
    keys = ("resident_blocks", "prefetch", "encoders", "vae_tiling", "experts_on_device")
    return {"text": plan.describe(), "encoders": plan.encoders, "text_encoder_bytes": sizes.text_encoder_bytes,
            "same_as_ours": all(getattr(plan, k) == getattr(ours, k) for k in keys),
            "differs_in": [k for k in keys if getattr(plan, k) != getattr(ours, k)]}


class StepClock:
    """Progress reports -> synchronised step times, the expert of each step, RssAnon samples."""

    def __init__(self, pipe, device):
        import torch

        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.experts = pipe.experts
        self.rows, self.last, self.copied = [], None, self._copied()
        self.peak_rss_anon = host_memory().get("RssAnon", 0.0)

    def _copied(self) -> list[int]:
        return [m.stats["bytes_copied"] if hasattr(m, "streamer") else 0 for m in self.experts]

    def _ran(self, grown: list[int]) -> int | None:
        moved = [i for i, g in enumerate(grown) if g > 0]
        active = [i for i, m in enumerate(self.experts) if getattr(getattr(m, "streamer", None), "active", False)]
        found = moved if len(moved) == 1 else active
        return found[0] if len(found) == 1 else None

    def __call__(self, progress) -> None:
        self.sync()
        now = time.perf_counter()
        if progress.step > 0:
            copied = self._copied()
            grown = [a - b for a, b in zip(copied, self.copied)]
            self.rows.append({"step": progress.step - 1, "expert": self._ran(grown), "s": now - self.last,
                              "bytes_copied_gb": sum(grown) / GB})
            self.copied = copied
        self.last = now
        self.peak_rss_anon = max(self.peak_rss_anon, host_memory().get("RssAnon", 0.0))


def step_summary(rows: list[dict], plan: list[int]) -> dict:
    times, experts = [r["s"] for r in rows], [r["expert"] for r in rows]
    per_expert = {str(i): statistics.median([r["s"] for r in rows if r["expert"] == i])
                  for i in sorted({e for e in experts if e is not None})}
    switch = next((k for k in range(1, len(experts)) if experts[k] != experts[k - 1]), None)
    return {"step_s_median": statistics.median(times), "step_s_per_expert": per_expert,
            "steps_per_expert": {str(i): experts.count(i) for i in (0, 1)}, "expert_plan": plan,
            "observed_matches_plan": experts == plan, "first_step_s": times[0], "switch_at_step": switch,
            "first_step_after_switch_s": None if switch is None else times[switch],
            "bytes_copied_per_step_gb_median": statistics.median(r["bytes_copied_gb"] for r in rows)}


def run(args) -> None:
    """Load and generate under the budget, recording into the report after each phase."""
    import numpy as np
    import torch

    import fastdit
    from fastdit.pipelines import memory, stages
    from fastdit.pipelines.control import GenerationControl
    from fastdit.pipelines.loading import quiet_libraries

    quiet_libraries()
    report, folder = Report.read(args.out), Path(args.folder)
    device = torch.device("cpu" if args.tiny else args.device)
    budget = memory.parse_size(args.budget) if args.budget not in (None, "none") else None
    note = None
    if args.tiny and args.budget is None:
        budget = tiny_budget(folder, args)
        note = "CPU: nothing to emulate; the smallest budget the memory planner accepts (it streams)"
    budget_info = {**set_budget(budget, device), "note": note}
    extra = {"quantize": args.quantize} if args.quantize else {}
    if args.lora_rank:  # the 4-step recipe: a distill LoRA per expert, the lightx2v-4step preset
        loras = few_step_loras(folder, args)
        extra.update(loras=[(str(loras[0]), 1.0)], loras_2=[(str(loras[1]), 1.0)], preset="lightx2v-4step")
    start = time.perf_counter()
    pipe = fastdit.load(folder, device=device, max_gpu_memory=budget, weights=args.weights,
                        plan_video=(args.height, args.width, args.frames), **extra)
    load_s = time.perf_counter() - start
    plan, stores = describe_plan(pipe), host_stores(pipe, device)
    print(plan["text"] or "no memory plan", flush=True)
    released = released_model_plan(pipe, budget, args)
    report.save("loaded", budget=budget_info, plan=plan, released_model_plan=released, load={
        "load_s": load_s, "pipeline_load_seconds": pipe.load_seconds, "model": pipe.spec.name,
        "task": pipe.spec.task, "experts": len(pipe.experts), "gpu": gpu_peaks(device), "host": host_memory(),
        "host_stores": stores})

    scheduler = copy.deepcopy(pipe.scheduler)
    if args.lora_rank:  # the preset's fixed timesteps, its experts switching at a step index
        args.steps = scheduler.num_inference_steps
        switch = scheduler.config.boundary_step
        expert_plan = [0 if i < switch else 1 for i in range(args.steps)]
    else:
        boundary = pipe.spec.boundary_ratio * scheduler.config.num_train_timesteps
        expert_plan = stages.plan_steps(scheduler, args.steps, boundary, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    clock = StepClock(pipe, device)
    start = time.perf_counter()
    steps = {} if args.lora_rank else {"num_inference_steps": args.steps}
    result = pipe.generate(PROMPT, height=args.height, width=args.width, num_frames=args.frames, seed=0,
                           control=GenerationControl(on_progress=clock), **steps)
    wall = time.perf_counter() - start
    frames, host = np.asarray(result.frames), host_memory()
    probe = pinned_probe(device)  # after the figures above: its 256 MB stay in torch's pinned cache
    peak_anon = max(clock.peak_rss_anon, host.get("RssAnon", 0.0))
    pinned = stores.get("host_store_allocated_gb", 0.0) if stores.get("pinned") else 0.0
    dedup = peak_anon + (0.0 if probe.get("counted_in") == "RssAnon" else pinned)  # pinned counted once
    text_bytes = sum(p.numel() * p.element_size() for p in pipe.text_encoder.parameters())
    on_host = ("while-encoding", "cpu")  # where the plan keeps an encoder in host memory
    estimate = None if released is None else (dedup - (text_bytes if plan["encoders"] in on_host else 0) / GB
                                              + (released["text_encoder_bytes"] if released["encoders"] in on_host
                                                 else 0) / GB)
    summary = {
        "load_s": load_s, "generate_s": wall, **step_summary(clock.rows, expert_plan),
        "peak_allocated_gb": gpu_peaks(device).get("peak_allocated_gb"),
        "peak_reserved_gb": gpu_peaks(device).get("peak_reserved_gb"),
        "host_vmhwm_gb": host.get("VmHWM"), "host_rss_anon_peak_gb": peak_anon, "host_pinned_gb": pinned,
        "host_rss_anon_plus_pinned_gb": peak_anon + pinned, "host_rss_anon_plus_pinned_dedup_gb": dedup,
        "host_target_gb": HOST_TARGET_GB,
        "host_estimate_with_umt5_xxl_gb": estimate,  # our encoder swapped for the released one, by the plans
        "frames_shape": list(frames.shape), "frames_finite": bool(np.isfinite(frames).all())}
    report.save("generated", summary=summary, generate={
        "wall_s": wall, "timings": result.timings, "guidance": result.settings.get("guidance"),
        "guidance_scale": result.settings.get("guidance_scale"),
        "guidance_scale_2": result.settings.get("guidance_scale_2"), "rows": clock.rows,
        "gpu": gpu_peaks(device), "host": host, "host_stores": host_stores(pipe, device),
        "text_encoder_bytes": text_bytes, "pinned_probe": probe,
        "frames_range": [float(np.nanmin(frames)), float(np.nanmax(frames))]})


def few_step_loras(folder: Path, args) -> list[Path]:
    """Random rank-``args.lora_rank`` LoRAs in the original layout (LightX2V's), one per expert,
    written beside the model folder once (benchmarks/lora.py's writer)."""
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import lora as lora_bench  # the sibling benchmark's random-LoRA writer
    from fastdit.models.wan.checkpoint import read_json
    from fastdit.models.wan.configs import WanConfig

    paths = []
    for index, subfolder in enumerate(("transformer", "transformer_2")):
        path = folder.parent / f"{folder.name}-lora{index}-rank{args.lora_rank}.safetensors"
        if not path.is_file():
            config = WanConfig.from_diffusers_config(read_json(folder / subfolder / "config.json"))
            lora_bench.write_random_lora(path, config, args.lora_rank, torch.bfloat16, seed=10 + index)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON results file (rewritten after every phase)")
    parser.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "fastdit-offload-video"),
                        help="where the model folder is written once and reused")
    parser.add_argument("--budget", default=None, help="max_gpu_memory (default 24GB; 'none': no budget; "
                        "--tiny: the smallest the planner accepts)")
    parser.add_argument("--weights", default="fp8", choices=("fp8", "dense"))
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 40; --tiny 4)")
    parser.add_argument("--height", type=int, default=None, help="default 480 (--tiny 64)")
    parser.add_argument("--width", type=int, default=None, help="default 832 (--tiny 64)")
    parser.add_argument("--frames", type=int, default=None, help="default 81 (--tiny 9)")
    parser.add_argument("--text-layers", type=int, default=24, help="UMT5 layers of the random model (24: UMT5-XXL; "
                        "fewer change the plan: 4 leaves every fp8 block resident at 24 GB)")
    parser.add_argument("--quantize", default=None, help="the precision setting (e.g. fp8: fp8 products and "
                        "8-bit attention on the streamed e4m3 weights)")
    parser.add_argument("--lora-rank", type=int, default=0, help="the 4-step recipe: a random LoRA of this rank "
                        "per expert and the lightx2v-4step preset (guidance off; --steps is the preset's)")
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--timeout", type=int, default=1500, help="seconds for the child that loads and generates")
    parser.add_argument("--write-only", action="store_true", help="write the model folder and stop")
    parser.add_argument("--tiny", action="store_true", help="CPU, the tiny two-expert model (seconds)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = (64, 64, 9, 4) if args.tiny else (480, 832, 81, 40)
    for key, value in zip(("height", "width", "frames", "steps"), sizes):
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.budget is None and not args.tiny:
        args.budget = "24GB"
    if args.child:
        try:
            run(args)
        except BaseException as exc:  # in the JSON too: the log may be cut
            report = Report.read(args.out)
            report.data.update(error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()[-4000:])
            report.save("failed")
            raise
        return 0

    report = Report(args.out, {
        "benchmark": "offload_video", "date": datetime.date.today().isoformat(),
        "model": "tiny two-expert Wan (a14b)" if args.tiny else "Wan2.2-T2V-A14B (random weights)",
        "experts_share_weights": None, "prompt": PROMPT,
        "settings": {"budget": args.budget, "weights": args.weights, "quantize": args.quantize,
                     "lora_rank": args.lora_rank or None, "steps": args.steps, "height": args.height,
                     "width": args.width, "frames": args.frames, "text_layers": None if args.tiny else args.text_layers,
                     "device": "cpu" if args.tiny else args.device}})
    start = time.perf_counter()
    folder, info = build_model(args)
    report.save("folder reused" if info["reused"] else "folder written", folder=info,
                experts_share_weights=experts_share_weights(folder))
    if args.write_only:
        return 0
    code = _in_child(args, folder)
    report = Report.read(args.out)
    report.data["child"] = {"returncode": code, "wall_s": time.perf_counter() - start}
    if "summary" not in report.data:  # the child's own error (with its traceback) wins
        report.data.setdefault("error", f"the run stopped before the video was made (child: {code})")
    report.save("done")
    summary = report.data.get("summary", {})
    print(json.dumps({k: summary.get(k) for k in ("load_s", "step_s_median", "step_s_per_expert",
                                                  "first_step_after_switch_s", "peak_allocated_gb",
                                                  "host_rss_anon_plus_pinned_gb", "host_target_gb",
                                                  "frames_shape", "frames_finite")}, indent=1), flush=True)
    return 0 if "summary" in report.data else 1


def _in_child(args, folder: Path) -> int | str:
    argv = [sys.executable, __file__, "--child", "--folder", str(folder), "--out", args.out,
            "--weights", args.weights, "--steps", str(args.steps), "--height", str(args.height),
            "--width", str(args.width), "--frames", str(args.frames), "--device", args.device]
    argv += ["--tiny"] if args.tiny else []
    argv += ["--quantize", args.quantize] if args.quantize else []
    argv += ["--lora-rank", str(args.lora_rank)] if args.lora_rank else []
    argv += ["--budget", args.budget] if args.budget is not None else []
    paths = [str(REPO / "src"), os.environ.get("PYTHONPATH")]
    try:
        return subprocess.run(argv, env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, paths))},
                              timeout=args.timeout).returncode
    except subprocess.TimeoutExpired:
        return f"timed out after {args.timeout} s"


if __name__ == "__main__":
    sys.exit(main())
