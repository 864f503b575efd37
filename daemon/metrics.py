"""Prometheus metrics, made against a registry that is passed in (tests use a fresh one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)


class DaemonMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self.frames = Counter("wellwatch_frames_total", "Frame files by outcome "
                              "(processed, quarantined, duplicate, unmatched_name, other_channel, retried, "
                              "channel_missing, deferred, smaller_than_tile)",
                              ["outcome"], registry=registry)
        self.tiles = Counter("wellwatch_tiles_total", "Tiles by call (live, dead, empty)", ["call"],
                             registry=registry)
        self.stage_seconds = Histogram("wellwatch_stage_seconds", "Time spent per pipeline stage",
                                       ["stage"], buckets=LATENCY_BUCKETS, registry=registry)
        self.latency = Histogram("wellwatch_frame_latency_seconds",
                                 "From the file's last write to its frame message being published",
                                 buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_size = Histogram("wellwatch_batch_size_patches", "Patches per inference batch",
                                    buckets=BATCH_BUCKETS, registry=registry)
        self.queue_depth = Gauge("wellwatch_queue_depth", "Items waiting per queue", ["queue"],
                                 registry=registry)
        self.messages = Counter("wellwatch_messages_published_total", "Stream messages sent, by type",
                                ["type"], registry=registry)
        self.snapshots = Counter("wellwatch_snapshot_requests_total", "Snapshot requests answered",
                                 registry=registry)
        self.provider = Gauge("wellwatch_execution_provider", "1 for the ONNX Runtime execution provider "
                              "each model slot really got", ["slot", "provider"], registry=registry)
        self.model = Info("wellwatch_model", "Identity of the loaded models", ["slot"], registry=registry)
        self.watch_root_up = Gauge("wellwatch_watch_root_available",
                                   "1 while the acquisition folder is reachable", registry=registry)
        self.pool_rebuilds = Counter("wellwatch_segmentation_pool_rebuilds", "Segmentation process pools "
                                     "replaced after a worker died", registry=registry)
        self.prepare_pool_rebuilds = Counter("wellwatch_prepare_pool_rebuilds", "Preparation process pools "
                                             "(pipeline.prepare_workers) replaced after a worker died",
                                             registry=registry)
        self.nothing_counted = Gauge("wellwatch_nothing_counted", "1 while files arrive but none becomes a "
                                     "counted frame (the log and status/nothing_counted say why)", registry=registry)
        for outcome in ("processed", "quarantined", "duplicate", "unmatched_name", "other_channel", "retried",
                        "channel_missing", "deferred", "worker_died", "smaller_than_tile"):
            self.frames.labels(outcome)
        for call in ("live", "dead", "empty"):
            self.tiles.labels(call)
