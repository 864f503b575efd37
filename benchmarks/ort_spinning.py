"""CPU cost of ONNX Runtime's spinning threads when batches come with gaps, as in the daemon.

    python benchmarks/ort_spinning.py [--batch 92] [--gap-ms 10] [--runs 100]

The bundled demo model runs a batch, then waits `gap-ms` (frames still arriving), `runs` times,
with session.intra_op.allow_spinning 1 (ONNX Runtime's default) and 0 (the daemon's default,
inference.spin_wait = false). Prints process CPU ms and wall ms per run for each.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    import onnxruntime as ort

    from wellwatch.core.bundled_models import bundled_demo_model

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=92)
    p.add_argument("--gap-ms", type=float, default=10.0)
    p.add_argument("--runs", type=int, default=100)
    args = p.parse_args()
    x = np.random.default_rng(0).standard_normal((args.batch, 1, 64, 64)).astype(np.float32)
    for spin in ("1", "0"):
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", spin)
        session = ort.InferenceSession(str(bundled_demo_model()), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: x}
        for _ in range(5):
            session.run(None, feed)
        cpu0, busy = time.process_time(), 0.0
        for _ in range(args.runs):
            t0 = time.perf_counter()
            session.run(None, feed)
            busy += time.perf_counter() - t0
            time.sleep(args.gap_ms / 1000)
        print(f"allow_spinning {spin}: CPU {1000 * (time.process_time() - cpu0) / args.runs:.2f} ms per run, "
              f"wall {1000 * busy / args.runs:.2f} ms per run")


if __name__ == "__main__":
    main()
