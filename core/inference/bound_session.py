"""ONNX Runtime I/O binding over fixed batch sizes: host buffers allocated, pinned and bound once.

For each warmed batch size the input and output buffers are numpy arrays bound to the session as
OrtValues that share their memory, so a run copies a batch into its buffer (padding the rest with
zeros) and nothing else is allocated: on a GPU, ONNX Runtime copies the pinned input to the device
and the output back; on the CPU it reads and writes the buffers in place. The same code runs on
both, so the CPU tests cover the GPU's path up to the device copies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wellwatch.core.inference import pinned


@dataclass
class _Bucket:
    size: int
    inputs: dict[str, np.ndarray]
    output: np.ndarray
    binding: object
    filled: int = 0  # rows holding a previous batch's data (zeroed before a smaller batch runs)


class BoundSession:
    def __init__(self, session, inputs: list[tuple[str, np.dtype, tuple[int, ...]]],
                 output: tuple[str, tuple[int, ...]], sizes: list[int], pin: bool):
        import onnxruntime as ort

        self.session, self.sizes = session, sorted(sizes)
        self.pinned = pin
        self.buckets: dict[int, _Bucket] = {}
        out_name, out_shape = output
        for b in self.sizes:
            buffers = {name: np.zeros((b, *shape), dtype) for name, dtype, shape in inputs}
            out = np.zeros((b, *out_shape), np.float32)
            if pin:  # all or nothing: a half-pinned set would make the figures hard to read
                self.pinned = self.pinned and all(pinned.pin(a) for a in (*buffers.values(), out))
            binding = session.io_binding()
            for name, array in buffers.items():
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array))
            binding.bind_ortvalue_output(out_name, ort.OrtValue.ortvalue_from_numpy(out))
            self.buckets[b] = _Bucket(b, buffers, out, binding)

    def bucket_for(self, n: int) -> int:
        """The smallest warmed batch size holding n rows (n <= the largest)."""
        return next(b for b in self.sizes if b >= n)

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Rows of `feeds` (at most the largest size) -> a fresh array of their outputs."""
        n = len(next(iter(feeds.values())))
        bucket = self.buckets[self.bucket_for(n)]
        for name, rows in feeds.items():
            buffer = bucket.inputs[name]
            buffer[:n] = rows
            if bucket.filled > n:
                buffer[n:bucket.filled] = 0
        bucket.filled = n
        self.session.run_with_iobinding(bucket.binding)
        return bucket.output[:n].copy()

    def __del__(self) -> None:  # registered memory must be unregistered before numpy frees it
        self.close()

    def close(self) -> None:
        if self.pinned and self.buckets:
            for bucket in self.buckets.values():
                for array in (*bucket.inputs.values(), bucket.output):
                    pinned.unpin(array)
        self.buckets.clear()
