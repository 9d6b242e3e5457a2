"""Translate one 256 x 256 x 100 MR end to end (read, preprocess, infer, invert, write) and the network alone.

Where the time goes: the stages around the network (read, intensity normalisation with its body mask, preprocess,
invert, write), timed by calling the functions ``translate_volume`` calls; the network alone in four variants measured
in this run on this machine (float32 eager, float32 + channels-last, bf16 autocast, bf16 + channels-last; inference
mode in all); and end to end, ``translate_volume`` itself (which feeds channels-last batches) plus the read and the
write, in float32 and bf16; and the batch size. The bf16 rows are timed only on a CPU with bf16 units (where
``precision: auto`` takes bf16); elsewhere bf16 is emulated and translate does not use it. The machine (CPU, its bf16
/ AMX units, threads) is named first.

Run: python benchmarks/bench_translate.py CHECKPOINT [--repeats 3] [--compile] [--onnx]
(e.g. the demo's ``demo_run/mr2ct_pix2pix/train/checkpoints/best.pt``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from timing import median_time

from medtranslate.data.phantom import make_subject
from medtranslate.imaging.preprocessor import Preprocessor
from medtranslate.imaging.transforms import IntensityParams, intensity_for
from medtranslate.inference.translate import translate_volume
from medtranslate.io.files import read_volume, write_nifti
from medtranslate.models.checkpoint import TranslatorSpec, build_inference_net, load_checkpoint
from medtranslate.runtime.precision import choose_precision, describe_machine

VARIANTS = {
    "float32 eager": dict(amp_dtype=None, channels_last=False),
    "float32 + channels-last": dict(amp_dtype=None, channels_last=True),
    "bf16 autocast": dict(amp_dtype=torch.bfloat16, channels_last=False),
    "bf16 + channels-last": dict(amp_dtype=torch.bfloat16, channels_last=True),
}


def network_only(
    net, image, spec: TranslatorSpec, amp_dtype, batch_size: int, channels_last: bool, inference_mode: bool = True
) -> torch.Tensor:
    depth = image.shape[-1]
    offsets = torch.arange(-spec.context, spec.context + 1)
    out = torch.empty_like(image)
    with torch.inference_mode() if inference_mode else torch.no_grad():
        for z0 in range(0, depth, batch_size):
            zs = torch.arange(z0, min(z0 + batch_size, depth))
            idx = torch.clamp(zs[:, None] + offsets[None, :], 0, depth - 1)
            batch = image[0][:, :, idx].permute(2, 3, 0, 1)
            batch = batch.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            if amp_dtype is None:
                pred = net(batch)
            else:
                with torch.autocast("cpu", dtype=amp_dtype):
                    pred = net(batch).float()
            out[0, :, :, z0 : z0 + len(zs)] = pred[:, 0].permute(1, 2, 0)
    return out


def network_only_example(image: torch.Tensor, spec: TranslatorSpec, batch_size: int) -> torch.Tensor:
    """A batch as network_only feeds it (the first slices), for tracing."""
    depth = image.shape[-1]
    zs = torch.arange(0, min(batch_size, depth))
    idx = torch.clamp(zs[:, None] + torch.arange(-spec.context, spec.context + 1)[None, :], 0, depth - 1)
    return image[0][:, :, idx].permute(2, 3, 0, 1).contiguous(memory_format=torch.channels_last)


def onnx_time(ckpt, image: torch.Tensor, spec: TranslatorSpec, batch_size: int, repeats: int, path: Path) -> float:
    """The network exported to ONNX (float32, batch axis dynamic) and run by ONNX Runtime's CPU provider."""
    import onnxruntime

    net = build_inference_net(ckpt, torch.device("cpu")).eval()
    example = network_only_example(image, spec, batch_size).contiguous()
    torch.onnx.export(net, (example,), str(path), input_names=["x"], output_names=["y"], dynamic_shapes=({0: "n"},))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = net(example)
    got = torch.from_numpy(session.run(None, {"x": example.numpy()})[0])
    print(f"ONNX export: largest difference from the eager network {float((got - expected).abs().max()):.2e}")

    def onnx_net(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"x": batch.contiguous().numpy()})[0])

    run = lambda im: network_only(onnx_net, im, spec, None, batch_size, False)  # noqa: E731
    run(image[..., :batch_size])  # warm-up
    return median_time(lambda: run(image), repeats)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (inductor; slow to compile)")
    parser.add_argument("--onnx", action="store_true", help="also time ONNX Runtime (pip install -e '.[bench]')")
    args = parser.parse_args()
    print(describe_machine(torch.device("cpu")))
    # translate's precision here (auto: bf16 only where the CPU has bf16 units); where it is fp32, bf16 would only be
    # emulated (2.5x slower or worse) and its rows say nothing about translate, so they are left out
    auto = choose_precision("auto", torch.device("cpu"))
    amps = {"float32": None, "bf16": torch.bfloat16} if auto.precision == "bf16" else {"float32": None}
    print(f"precision {auto.precision} ({auto.reason}){'' if 'bf16' in amps else ': bf16 rows left out'}")
    ckpt = load_checkpoint(args.checkpoint)
    spec = TranslatorSpec.from_dict(ckpt["spec"])
    subject = make_subject(3, shape=(256, 256, 100), spacing=(0.9, 0.9, 1.7))
    with tempfile.TemporaryDirectory() as tmp:
        src = write_nifti(Path(tmp) / "mr.nii.gz", subject.mr.array, subject.mr.affine, np.int16)
        t_read, volume = median_time(lambda: read_volume(src), args.repeats)
        t_int, intensity = median_time(
            lambda: intensity_for(spec.source_kind, volume.array, volume.affine, source="mr"), args.repeats
        )
        pre = Preprocessor(spacing=spec.spacing, divisible=(spec.divisor, spec.divisor, 1))
        t_pre, data = median_time(lambda: pre(volume, intensity, keep_mask=False), args.repeats)
        image = data["image"].as_tensor().float()
        target = IntensityParams.from_dict(spec.target_intensity)
        t_inv, sct = median_time(lambda: pre.invert(image.clone(), data["image"], target, volume), args.repeats)
        t_write, _ = median_time(
            lambda: write_nifti(Path(tmp) / "sct.nii.gz", sct.array, sct.affine, np.int16, overwrite=True),
            args.repeats,
        )
        print(f"model {ckpt['kind']} ({ckpt['spec']['task']}), input {volume.shape}, batch {args.batch_size}")
        print(
            f"stages (median of {args.repeats}): read {t_read:.3f} s, intensity {t_int:.3f} s, preprocess "
            f"{t_pre:.3f} s, invert {t_inv:.3f} s, write {t_write:.3f} s"
        )
        base = None
        for name, v in VARIANTS.items():
            if v["amp_dtype"] is not None and "bf16" not in amps:
                continue
            net = build_inference_net(ckpt, torch.device("cpu"))
            if v["channels_last"]:
                net = net.to(memory_format=torch.channels_last)
            run = lambda im: network_only(net, im, spec, v["amp_dtype"], args.batch_size, v["channels_last"])  # noqa: E731
            run(image[..., :8])  # warm-up
            t_net, _ = median_time(lambda: run(image), args.repeats)
            base = base or t_net
            print(f"network alone, {name:24s} {t_net:6.3f} s ({base / t_net:4.2f}x float32 eager)")
        best = build_inference_net(ckpt, torch.device("cpu")).to(memory_format=torch.channels_last)
        for batch_size in (4, 8, 16):
            t_b, _ = median_time(
                lambda: network_only(best, image, spec, auto.amp_dtype, batch_size, True), args.repeats
            )
            print(f"network alone, {auto.precision} (auto) + channels-last, batch {batch_size:2d}: {t_b:6.3f} s")
        t_ng, _ = median_time(
            lambda: network_only(best, image, spec, auto.amp_dtype, args.batch_size, True, False), args.repeats
        )
        print(f"network alone, {auto.precision} + channels-last, no_grad instead of inference_mode: {t_ng:6.3f} s")
        # TorchScript, as an exported model could ship it (the "if it measures faster"): traced on a batch of
        # this shape, frozen and optimised for inference (which folds batch norm into the convolutions)
        for name, amp in amps.items():
            eager = build_inference_net(ckpt, torch.device("cpu")).to(memory_format=torch.channels_last)
            example = network_only_example(image, spec, args.batch_size)
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp is not None):
                traced = torch.jit.trace(
                    eager.eval(), example, check_trace=amp is None
                )  # bf16 is not bitwise repeatable
                scripted = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
            run = lambda im: network_only(scripted, im, spec, amp, args.batch_size, True)  # noqa: E731
            run(image[..., : args.batch_size])  # warm-up (TorchScript's profiling runs)
            run(image[..., : args.batch_size])
            t_ts, _ = median_time(lambda: run(image), args.repeats)
            print(
                f"network alone, TorchScript {name:8s} + channels-last: {t_ts:6.3f} s "
                f"({base / t_ts:4.2f}x float32 eager)"
            )
        if args.onnx:
            t_onnx = onnx_time(ckpt, image, spec, args.batch_size, args.repeats, Path(tmp) / "net.onnx")
            print(
                f"network alone, ONNX Runtime float32 (CPU provider): {t_onnx:6.3f} s "
                f"({base / t_onnx:4.2f}x float32 eager)"
            )
        if args.compile:
            t0 = time.perf_counter()
            compiled = torch.compile(best)
            network_only(compiled, image[..., :8], spec, auto.amp_dtype, args.batch_size, True)
            t_c0 = time.perf_counter() - t0
            t_c, _ = median_time(
                lambda: network_only(compiled, image, spec, auto.amp_dtype, args.batch_size, True), args.repeats
            )
            print(
                f"network alone, {auto.precision} + channels-last + torch.compile: {t_c:6.3f} s "
                f"(compiling took {t_c0:.1f} s)"
            )
        net = build_inference_net(ckpt, torch.device("cpu"))
        for name, amp in amps.items():

            def end_to_end():
                vol = read_volume(src)
                out = translate_volume(net, vol, spec, batch_size=args.batch_size, amp_dtype=amp)
                write_nifti(Path(tmp) / "sct.nii.gz", out.array, out.affine, np.int16, overwrite=True)

            end_to_end()  # warm-up
            t_e2e, _ = median_time(end_to_end, args.repeats)
            print(f"end to end (translate_volume: channels-last input), {name:8s} {t_e2e:6.3f} s")


if __name__ == "__main__":
    main()
