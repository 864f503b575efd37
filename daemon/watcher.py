"""Discovery: watchdog events are hints; a scan at start and a periodic reconcile scan are the truth.

The observer starts before the first scan, so a file written during the scan is seen by one or
the other. Temp names (".x.part", "~x.tif", "x.tmp") are never offered; a rename destination is.
Symlinks that lead outside the watched root are never followed.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from typing import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from wellwatch.core.errors import StartupError
from wellwatch.core.files.candidates import is_candidate_name

log = logging.getLogger(__name__)

OnPath = Callable[[str, bool], None]  # (absolute path, is a rename destination)


def inside_root(path: str, root: str) -> bool:
    """False for a symlink (or a path through one) that resolves outside the watched root."""
    real = os.path.realpath(path)
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


class _Handler(FileSystemEventHandler):
    def __init__(self, on_path: OnPath, extensions: tuple[str, ...], root: str, root_lost: threading.Event):
        self.on_path, self.extensions, self.root, self.root_lost = on_path, extensions, root, root_lost

    def _offer(self, path: str, renamed: bool) -> None:
        if is_candidate_name(os.path.basename(path), self.extensions) and (
                not os.path.islink(path) or inside_root(path, self.root)):
            self.on_path(path, renamed)

    def on_created(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._offer(str(event.src_path), False)

    def on_modified(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._offer(str(event.src_path), False)

    def on_closed(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._offer(str(event.src_path), False)

    def on_moved(self, event: FileSystemEvent) -> None:
        if not event.is_directory:
            self._offer(str(event.dest_path), True)

    def on_deleted(self, event: FileSystemEvent) -> None:
        # the watched folder itself: its watch is dead even if a new folder takes its inode
        if event.is_directory and os.path.realpath(str(event.src_path)) == self.root:
            self.root_lost.set()


class Discovery:
    def __init__(self, root: str, on_path: OnPath, observer: str = "native", recursive: bool = True,
                 extensions: tuple[str, ...] = (".tif", ".tiff")):
        self.root = os.path.realpath(root)
        self.on_path = on_path
        self.recursive = recursive
        self.extensions = extensions
        self.kind = observer
        self.root_lost = threading.Event()  # set when the watched folder was deleted under the observer
        self.observer = self._new_observer()

    def _new_observer(self):
        observer = PollingObserver(timeout=1.0) if self.kind == "polling" else Observer()
        observer.schedule(_Handler(self.on_path, self.extensions, self.root, self.root_lost), self.root,
                          recursive=self.recursive)
        return observer

    def start(self) -> int:
        try:
            self.observer.start()
        except OSError as e:  # the folder went away between the config's check and now (a share dropping)
            raise StartupError(f"watch.root {self.root}: cannot watch it ({e.strerror or e}); "
                               "is the folder (or its network share) there?") from None
        return self.scan()

    def restart_observer(self) -> bool:
        """Watch the folder now at the root (it came back, or was replaced); False if it cannot be yet."""
        self.stop()
        self.root_lost.clear()
        try:
            self.observer = self._new_observer()
            self.observer.start()
            return True
        except OSError as e:  # gone again already: the gate tries again
            log.warning("cannot watch %s yet: %s", self.root, e)
            return False

    def observer_alive(self) -> bool:
        return self.observer.is_alive()

    def root_identity(self) -> tuple[int, int] | None:
        """(device, inode) of the root folder; None when it is not there. A new inode = a new folder."""
        try:
            st = os.stat(self.root)
        except OSError:
            return None
        return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None

    def stop(self) -> None:
        if self.observer.is_alive():
            self.observer.stop()
            self.observer.join(timeout=5)

    def root_available(self) -> bool:
        return os.path.isdir(self.root)

    def scan(self) -> int:
        """Offer every candidate file under the root; return how many were offered."""
        offered = 0
        for path in self.list_files():
            self.on_path(path, False)
            offered += 1
        return offered

    def list_files(self) -> list[str]:
        found: list[str] = []
        for folder, dirs, files in os.walk(self.root, followlinks=False):
            for name in files:
                if is_candidate_name(name, self.extensions):
                    path = os.path.join(folder, name)
                    if not os.path.islink(path) or inside_root(path, self.root):
                        found.append(path)
            if not self.recursive:
                dirs.clear()
        return sorted(found)
