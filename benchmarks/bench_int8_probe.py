"""Probe for the int8 CPU path: the vit_b image encoder in fp32 against the same encoder with
dynamically quantized linear layers (int8 weights per output channel, activations quantized
per call), on each of PyTorch's quantized engines, per CPU class.

A CPU class is emulated on a newer CPU by capping the instruction sets the libraries use
(``ATEN_CPU_CAPABILITY``, ``ONEDNN_MAX_CPU_ISA``, ``MKL_ENABLE_INSTRUCTIONS``,
``FBGEMM_ENABLE_INSTRUCTIONS``): ``native`` uses everything the CPU has, ``avx2`` caps all four
at AVX2 (a CPU without AVX512 or VNNI). Each (class, configuration) runs in its own process.
Reported: the median encoder time of ``--repeats`` runs after a warm-up, the speed-up over fp32
in the same class and the largest output error relative to fp32's largest magnitude.

Run: ``cd benchmarks && PYTHONPATH=.. python bench_int8_probe.py [--classes native avx2]``.
Prints a Markdown table and writes JSON to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import statistics
import time

from common import RESULTS, add_worker_arguments, machine, run_worker, send_result, write_results

CLASSES = {
    "native": {},
    "avx2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
    },
}
CONFIGS = ("fp32", "fbgemm", "x86", "onednn")


def worker(config: str, repeats: int, seed: int) -> None:
    import copy
    import warnings

    import torch

    from segany.build import build_sam

    torch.manual_seed(seed)
    encoder = build_sam("vit_b", precision="fp32", device="cpu").image_encoder
    x = torch.randn(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        reference = encoder(x)
    if config != "fp32":
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        torch.backends.quantized.engine = config
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            encoder = quantize_dynamic(
                copy.deepcopy(encoder),
                {torch.nn.Linear: per_channel_dynamic_qconfig},
                dtype=torch.qint8,
            )
    times = []
    with torch.inference_mode():
        out = encoder(x)
        for _ in range(repeats):
            start = time.perf_counter()
            out = encoder(x)
            times.append(time.perf_counter() - start)
    error = float((out - reference).abs().max() / reference.abs().max())
    send_result(
        {
            "seconds": statistics.median(times),
            "relative_error": error,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", nargs="+", default=list(CLASSES), choices=list(CLASSES))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    add_worker_arguments(parser, config=None)
    args = parser.parse_args()
    if args.worker:
        worker(args.config, args.repeats, args.seed)
        return
    rows = []
    for cls in args.classes:
        base = None
        for config in CONFIGS:
            opts = ["--config", config, "--repeats", str(args.repeats), "--seed", str(args.seed)]
            result = run_worker(__file__, opts, f"{cls} {config}", env=CLASSES[cls])
            base = base or result["seconds"]
            rows.append({"class": cls, "config": config, "speedup": base / result["seconds"]})
            rows[-1].update(result)
    print("| CPU class | configuration | encoder (s) | vs fp32 | max error / max abs |")
    print("|---|---|---|---|---|")
    for r in rows:
        name = "fp32" if r["config"] == "fp32" else f"int8 ({r['config']})"
        print(
            f"| {r['class']} ({r['cpu_capability']}) | {name} | {r['seconds']:.2f} "
            f"| {r['speedup']:.2f}x | {r['relative_error']:.4f} |"
        )
    write_results(RESULTS, "int8_probe", {"machine": machine(), "rows": rows})


if __name__ == "__main__":
    main()
