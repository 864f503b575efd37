"""The daemon's frame path, one module per stage, in the order a frame meets them:

    gate.py     discovery -> complete files, names parsed once        (thread "gate")
    read.py     file -> bytes -> hash -> image -> model inputs        (threads "read_N")
    infer.py    model inputs pooled into batches per network          (thread "infer")
    commit.py   counts -> aggregate + journal + outbox, one transaction (thread "commit")
    publish.py  ZeroMQ PUB + snapshot ROUTER                          (thread "publisher")

Stages talk only through the messages of daemon/messages.py, on queues that daemon/pipeline.py
creates and wires; no stage imports another.
"""
