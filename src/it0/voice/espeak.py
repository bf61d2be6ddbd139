"""eSpeak NG text-to-speech in this process, through ctypes on the library espeakng-loader ships.

eSpeak NG keeps global state (one voice, one output callback), so syntheses take turns behind
one lock; ``Espeak.asynthesize`` runs the blocking call in a thread. Its audio (22050 Hz) is
resampled to the rate asked for and returned as 16-bit mono little-endian PCM.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
from dataclasses import dataclass

import espeakng_loader  # type: ignore[import-untyped]
import numpy as np
import soxr  # type: ignore[import-untyped]

from it0.core.errors import IT0Error

log = logging.getLogger("it0.voice")

# espeak-ng/speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # report a broken data directory instead of calling exit()
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_PARAMETER_RATE = 1
_EE_OK = 0

MIN_RATE, MAX_RATE = 80, 450  # words per minute eSpeak NG accepts

_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class EspeakError(IT0Error):
    """eSpeak NG could not start or could not speak (unknown voice, broken data)."""

    code = "tts_failed"
    status = 500


class _Engine:
    """The process's one eSpeak NG instance; every call but ``__init__`` needs ``_lock``."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,  # text
            ctypes.c_size_t,  # its size in bytes, with the NUL
            ctypes.c_uint,  # position
            ctypes.c_int,  # position type
            ctypes.c_uint,  # end position (0: none)
            ctypes.c_uint,  # flags
            ctypes.c_void_p,  # unique identifier (out)
            ctypes.c_void_p,  # user data
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        data_path = espeakng_loader.get_data_path().encode()
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, _INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise EspeakError(f"eSpeak NG failed to initialise with data at {data_path.decode()}")
        self.lib = lib
        self.sample_rate: int = rate
        self._pcm = bytearray()
        # held for the life of the process: eSpeak keeps the bare function pointer
        self._callback = _SynthCallback(self._collect)
        lib.espeak_SetSynthCallback(self._callback)
        self._voice: tuple[str, int] | None = None
        log.debug("eSpeak NG ready at %d Hz", rate)

    def _collect(self, wav: ctypes._Pointer[ctypes.c_short], count: int, events: int | None) -> int:
        if count > 0 and wav:
            self._pcm += ctypes.string_at(wav, count * 2)
        return 0  # 0: go on

    def _select(self, voice: str, rate: int) -> None:
        if self._voice == (voice, rate):
            return
        self._voice = None
        if self.lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
            raise EspeakError(f"eSpeak NG has no voice {voice!r}")
        if self.lib.espeak_SetParameter(_PARAMETER_RATE, rate, 0) != _EE_OK:
            raise EspeakError(f"eSpeak NG refused the rate {rate}")
        self._voice = (voice, rate)

    def speak(self, text: str, voice: str, rate: int) -> bytes:
        """Native-rate, native-endian 16-bit PCM of ``text``."""
        self._select(voice, rate)
        data = text.replace("\x00", " ").encode()
        self._pcm = bytearray()
        try:
            result = self.lib.espeak_Synth(
                data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
            )
            if result != _EE_OK:
                raise EspeakError(f"eSpeak NG failed to speak (error {result})")
            return bytes(self._pcm)
        finally:
            self._pcm = bytearray()


_lock = threading.Lock()
_engine: _Engine | None = None


def _engine_locked() -> _Engine:
    global _engine
    if _engine is None:
        _engine = _Engine()
    return _engine


@dataclass(frozen=True)
class Espeak:
    """A voice of eSpeak NG: ``synthesize`` turns text into 16-bit mono little-endian PCM."""

    voice: str = "en-us"
    rate: int = 175  # words per minute

    def __post_init__(self) -> None:
        if not MIN_RATE <= self.rate <= MAX_RATE:
            raise ValueError(f"eSpeak NG speaks {MIN_RATE}-{MAX_RATE} words a minute")
        if not self.voice or "\x00" in self.voice:
            raise ValueError("an eSpeak NG voice needs a name")

    def synthesize(self, text: str, sample_rate: int = 16_000) -> bytes:
        """PCM of ``text`` at ``sample_rate`` (blocking; empty for text with nothing to say)."""
        if sample_rate <= 0:
            raise ValueError("the sample rate must be positive")
        if not text.strip():
            return b""
        with _lock:
            engine = _engine_locked()
            pcm = engine.speak(text, self.voice, self.rate)
            native = engine.sample_rate
        samples = np.frombuffer(pcm, dtype=np.int16)
        if native != sample_rate and samples.size:
            samples = soxr.resample(samples, native, sample_rate)
        return samples.astype("<i2", copy=False).tobytes()

    async def asynthesize(self, text: str, sample_rate: int = 16_000) -> bytes:
        """``synthesize`` in a worker thread, so the event loop keeps running."""
        return await asyncio.to_thread(self.synthesize, text, sample_rate)
