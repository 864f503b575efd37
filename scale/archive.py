"""An archive's frames, found the way the daemon finds them: its extensions, naming and channel rule.

Each ROOT is one acquisition folder (what `watch.root` would be); `path` is relative to it, as in
the daemon's journal, so a reprocessed frame and a journaled one have the same name.
"""

from __future__ import annotations

import dataclasses
import os

from wellwatch.core.config import Config
from wellwatch.core.errors import NamingError
from wellwatch.core.naming import NamingScheme
from wellwatch.core.plate import PLATE_FORMATS
from wellwatch.core.files.candidates import is_candidate_name


def config_for_root(config: Config, root: str) -> Config:
    """The config as if the daemon watched `root` (the plate name defaults to the folder's)."""
    return dataclasses.replace(config, watch=dataclasses.replace(config.watch, root=os.path.realpath(root)))


def list_frames(roots: list[str], config: Config) -> tuple[list[dict], list[str]]:
    """-> (frame rows: root, abspath, path, plate, well, field, timepoint, z, channel; names skipped with why)."""
    if len(config.channels.files()) > 1:
        raise ValueError(f"reprocess: channels {list(config.channels.files())} (label_free, segment_on): "
                         "multi-channel fields are not reprocessed yet; give a one-channel model's channel")
    frames, skipped = [], []
    for given in roots:
        if not os.path.isdir(given):
            raise FileNotFoundError(f"reprocess: {given}: not a folder")
        cfg = config_for_root(config, given)
        root = cfg.watch.root
        naming = NamingScheme(cfg.watch.naming, PLATE_FORMATS[cfg.plate.format], cfg.plate_name,
                              cfg.watch.pattern, cfg.plate.default_well)
        label_free = cfg.channels.label_free
        for dirpath, dirnames, names in os.walk(root):
            if not cfg.watch.recursive:
                dirnames.clear()
            dirnames.sort()
            for name in sorted(names):
                if not is_candidate_name(name, cfg.watch.extensions):
                    continue
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, root)
                if name.lower().endswith(".nd2"):
                    skipped.append(f"{rel}: .nd2 files are not reprocessed yet")
                    continue
                try:  # the path below the root, as the daemon: folder-aware presets read its folders
                    meta = naming.parse(rel)
                except NamingError as e:
                    skipped.append(f"{rel}: {e.reason}")
                    continue
                if meta.channel and meta.channel not in label_free:
                    continue  # another channel (e.g. the stain): the daemon ignores it too
                frames.append({"root": root, "abspath": full, "path": rel, **dataclasses.asdict(meta)})
    return frames, skipped
