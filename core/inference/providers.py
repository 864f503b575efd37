"""Which ONNX Runtime execution providers to ask for, with which options, from [inference].

Pure: the provider chain is built from the config and the providers this onnxruntime has, so it is
tested without a GPU. What the session really got is read back from the session (see backend.py):
onnxruntime-gpu falls back to the CPU, silently but for a log line, when CUDA cannot load.
"""

from __future__ import annotations

from wellwatch.core.config import InferenceConfig

TENSORRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
GPU_PROVIDERS = (TENSORRT, CUDA)

ProviderChain = list[tuple[str, dict[str, str]]]


def cuda_options(inference: InferenceConfig) -> dict[str, str]:
    """The CUDA provider's options, named as ONNX Runtime names them (values as strings, as it parses them)."""
    c = inference.cuda
    options = {"device_id": str(c.device_id), "cudnn_conv_algo_search": c.cudnn_conv_algo_search,
               "arena_extend_strategy": c.arena_extend_strategy,
               "do_copy_in_default_stream": "1" if c.do_copy_in_default_stream else "0"}
    if c.gpu_mem_limit_mb:
        options["gpu_mem_limit"] = str(c.gpu_mem_limit_mb * 1024 * 1024)
    return options


def profile_shapes(inputs: list[tuple[str, tuple[int, ...]]], batch: int) -> str:
    """TensorRT's shape-profile syntax, 'input:16x1x64x64,affine:16x1x2', for one batch size."""
    return ",".join(f"{name}:{'x'.join(map(str, (batch, *shape)))}" for name, shape in inputs)


def tensorrt_options(inference: InferenceConfig, inputs: list[tuple[str, tuple[int, ...]]],
                     batch_sizes: list[int]) -> dict[str, str]:
    """TensorRT with an engine cache, and one shape profile covering every warmed batch size, so that
    its engine is built once (minutes) and reloaded from the cache at the next start (seconds)."""
    t = inference.tensorrt
    return {"device_id": str(inference.cuda.device_id),
            "trt_engine_cache_enable": "1", "trt_engine_cache_path": t.engine_cache_dir,
            "trt_timing_cache_enable": "1", "trt_timing_cache_path": t.engine_cache_dir,
            "trt_fp16_enable": "1" if t.fp16 else "0",
            "trt_profile_min_shapes": profile_shapes(inputs, min(batch_sizes)),
            "trt_profile_opt_shapes": profile_shapes(inputs, max(batch_sizes)),
            "trt_profile_max_shapes": profile_shapes(inputs, max(batch_sizes))}


def provider_chain(inference: InferenceConfig, available: list[str], inputs: list[tuple[str, tuple[int, ...]]],
                   batch_sizes: list[int]) -> ProviderChain:
    """Providers in order of preference, each with its options: TensorRT (when enabled and present),
    CUDA (unless device = cpu, and when present), then always the CPU."""
    chain: ProviderChain = []
    if inference.device != "cpu":
        if inference.tensorrt.enable and TENSORRT in available:
            chain.append((TENSORRT, tensorrt_options(inference, inputs, batch_sizes)))
        if CUDA in available:
            chain.append((CUDA, cuda_options(inference)))
    return chain + [(CPU, {})]


def is_gpu(provider: str) -> bool:
    return provider in GPU_PROVIDERS
