"""The playback buffer for the agent's voice: PCM in from the network, out to a speaker.

Audio arrives in bursts of uneven size; a speaker pulls fixed-size blocks at a steady rate.
``JitterBuffer`` sits between the two. It holds back playback until ``threshold`` bytes have
queued up (150 ms by default), then hands out blocks until it runs dry, and then holds back
again. ``clear()`` drops what is queued when the user barges in; ``reset()`` does the same
after a reconnect.

Every method takes one internal lock and only copies bytes while holding it, so a
sound-device callback thread may read while the event loop writes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

SAMPLE_RATE = 16_000
SAMPLE_WIDTH = 2
BYTES_PER_SECOND = SAMPLE_RATE * SAMPLE_WIDTH
DEFAULT_THRESHOLD = 4800  # 150 ms of 16 kHz, 16-bit, mono


@dataclass(frozen=True)
class JitterStats:
    """A consistent snapshot of the buffer's counters, for a UI or a benchmark."""

    bytes_in: int
    bytes_out: int
    buffered: int
    playing: bool
    underruns: int
    clears: int
    resets: int
    dropped: int  # bytes thrown away by clear(), reset() and a full buffer

    @property
    def buffered_ms(self) -> float:
        return self.buffered * 1000 / BYTES_PER_SECOND


class JitterBuffer:
    """PCM queue that starts playback only once ``threshold`` bytes are buffered.

    ``capacity`` (bytes, optional) bounds the queue: when a write overflows it, the oldest
    audio is dropped. Unbounded by default, because servers often send speech faster than
    real time and dropping it would cut words.
    """

    def __init__(
        self,
        threshold: int = DEFAULT_THRESHOLD,
        *,
        capacity: int | None = None,
        sample_width: int = SAMPLE_WIDTH,
    ) -> None:
        if threshold <= 0 or sample_width <= 0:
            raise ValueError("threshold and sample_width must be positive")
        if capacity is not None and capacity < threshold:
            raise ValueError("capacity must be at least the threshold")
        self.threshold = threshold
        self.capacity = capacity
        self.sample_width = sample_width
        self._lock = threading.Lock()
        self._data = bytearray()
        self._playing = False
        self._bytes_in = 0
        self._bytes_out = 0
        self._underruns = 0
        self._clears = 0
        self._resets = 0
        self._dropped = 0

    def write(self, chunk: bytes) -> None:
        """Queue a chunk of any size; playback starts once ``threshold`` bytes are queued."""
        if not chunk:
            return
        with self._lock:
            self._data += chunk
            self._bytes_in += len(chunk)
            if self.capacity is not None and len(self._data) > self.capacity:
                excess = len(self._data) - self.capacity
                excess += -excess % self.sample_width  # keep the queue on a sample boundary
                del self._data[:excess]
                self._dropped += excess
            if not self._playing and len(self._data) >= self.threshold:
                self._playing = True

    def read(self, n: int) -> bytes | None:
        """The next ``n`` bytes to play, or None while buffering.

        While playing, the answer is exactly ``n`` bytes as long as that much is queued.
        When less is queued, that is an underrun: the buffer goes back to buffering and
        hands out what is left, in whole samples (fewer than ``n`` bytes), or None when not
        even one sample is left. ``n`` must be a positive multiple of the sample width.
        """
        if n <= 0 or n % self.sample_width:
            raise ValueError(f"n must be a positive multiple of {self.sample_width}")
        with self._lock:
            if not self._playing:
                return None
            size = n
            if len(self._data) < n:
                self._underruns += 1
                self._playing = False
                size = len(self._data) - len(self._data) % self.sample_width
                if size == 0:
                    return None
            block = bytes(self._data[:size])
            del self._data[:size]
            self._bytes_out += size
            return block

    def read_or_silence(self, n: int) -> bytes:
        """Exactly ``n`` bytes, padded with silence: what a sound-card callback needs."""
        block = self.read(n)
        if block is None:
            return bytes(n)
        return block + bytes(n - len(block))

    def clear(self) -> None:
        """Barge-in: drop everything queued for playback now and buffer again."""
        with self._lock:
            self._drop()
            self._clears += 1

    def reset(self) -> None:
        """A fresh start after a reconnect: drop everything queued and buffer again."""
        with self._lock:
            self._drop()
            self._resets += 1

    def _drop(self) -> None:
        self._dropped += len(self._data)
        self._data.clear()
        self._playing = False

    @property
    def playing(self) -> bool:
        with self._lock:
            return self._playing

    @property
    def buffered(self) -> int:
        """Bytes queued and not yet read."""
        with self._lock:
            return len(self._data)

    def stats(self) -> JitterStats:
        with self._lock:
            return JitterStats(
                bytes_in=self._bytes_in,
                bytes_out=self._bytes_out,
                buffered=len(self._data),
                playing=self._playing,
                underruns=self._underruns,
                clears=self._clears,
                resets=self._resets,
                dropped=self._dropped,
            )
