"""Offline speech: eSpeak NG synthesis, the packaged Whisper model, and both as Pipecat services
in a real pipeline. Nothing here may reach a model hub: the suite's network guard is on."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from it0.voice.espeak import Espeak, EspeakError
from it0.voice.speech import (
    PACKAGED_MODEL_SHA256,
    EspeakTTSService,
    OfflineWhisperSTTService,
    SpeechConfigError,
    WhisperModelError,
    WhisperModelHashError,
    build_stt,
    build_tts,
    load_whisper_model,
    packaged_model_dir,
    pipecat_imports,
    transcribe,
    verify_model,
    whisper_model_dir,
    whisper_threads,
)

with pipecat_imports():  # a filterwarnings mark only covers test bodies, not collection
    from pipecat.audio.vad.vad_analyzer import VADParams
    from pipecat.frames.frames import (
        ErrorFrame,
        Frame,
        InputAudioRawFrame,
        TranscriptionFrame,
        TTSAudioRawFrame,
        TTSSpeakFrame,
        TTSStartedFrame,
        TTSStoppedFrame,
        VADUserStartedSpeakingFrame,
        VADUserStoppedSpeakingFrame,
    )
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.processors.frame_processor import FrameProcessor
    from pipecat.tests.utils import run_test

    from it0.voice.pipeline import (
        PauseAwareVAD,
        PauseAwareVADProcessor,
        UserPausedFrame,
        UserResumedFrame,
    )

RATE = 16_000
FRAME_BYTES = RATE * 2 * 20 // 1000  # 20 ms of 16-bit mono
PHRASE = "check disk usage on localhost"
SECOND_PHRASE = "show memory usage on the database server"


def seconds(pcm: bytes, rate: int = RATE) -> float:
    return len(pcm) / 2 / rate


def rms(pcm: bytes) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    return float(np.sqrt(np.mean(samples**2))) if samples.size else 0.0


@pytest.fixture(scope="module")
def speech() -> bytes:
    return Espeak().synthesize(PHRASE, RATE)


@pytest.fixture(scope="module")
def whisper() -> Any:
    return load_whisper_model()


async def run_frames(processor: FrameProcessor, frames: Sequence[Frame]) -> list[Frame]:
    """What ``processor`` sends downstream in a real pipeline fed ``frames`` and an EndFrame."""
    # a generous start: the STT service loads (or finds) the shared model when it starts
    down, _ = await run_test(processor, frames_to_send=frames, start_timeout=60.0)
    return list(down)


# --- eSpeak NG -------------------------------------------------------------------------------


def test_espeak_speaks_16k_pcm(speech: bytes) -> None:
    assert len(speech) % 2 == 0
    assert 1.0 < seconds(speech) < 5.0
    assert rms(speech) > 300  # speech, not silence


def test_espeak_resamples_to_the_rate_asked_for(speech: bytes) -> None:
    wideband = Espeak().synthesize(PHRASE, 24_000)
    assert seconds(wideband, 24_000) == pytest.approx(seconds(speech), abs=0.05)


def test_espeak_has_nothing_to_say_for_blank_text() -> None:
    assert Espeak().synthesize(" \n ") == b""


def test_espeak_rejects_unknown_voice_and_bad_rate() -> None:
    with pytest.raises(EspeakError, match="no voice"):
        Espeak(voice="no-such-voice").synthesize("hello")
    with pytest.raises(ValueError, match="words a minute"):
        Espeak(rate=5)
    assert Espeak().synthesize("hello")  # a failed voice change leaves eSpeak usable


async def test_concurrent_syntheses_all_return_audio() -> None:
    voices = [Espeak("en-us"), Espeak("en", rate=150), Espeak("en-us", rate=220)]
    jobs = [voices[i % 3].asynthesize(f"host number {i} is {PHRASE}") for i in range(12)]
    results = await asyncio.gather(*jobs)
    assert all(seconds(pcm) > 1.0 and rms(pcm) > 300 for pcm in results)


# --- Whisper ---------------------------------------------------------------------------------


def test_round_trip_hears_disk(whisper: Any, speech: bytes) -> None:
    assert "disk" in transcribe(whisper, speech).lower()


def test_round_trip_second_phrase(whisper: Any) -> None:
    text = transcribe(whisper, Espeak().synthesize(SECOND_PHRASE)).lower()
    assert "memory" in text
    assert "database" in text


async def test_calls_share_the_model_concurrently(whisper: Any, speech: bytes) -> None:
    texts = await asyncio.gather(
        *(asyncio.to_thread(transcribe, whisper, speech) for _ in range(3))
    )
    assert all("disk" in text.lower() for text in texts)


def test_silence_transcribes_to_nothing(whisper: Any) -> None:
    assert transcribe(whisper, bytes(2 * RATE)) == ""


def test_the_model_is_loaded_once_and_offline(whisper: Any) -> None:
    assert load_whisper_model() is whisper
    assert load_whisper_model(packaged_model_dir()) is whisper
    assert os.environ["HF_HUB_OFFLINE"] == "1"


@pytest.mark.parametrize(("cores", "threads"), [(1, 1), (2, 2), (3, 3), (16, 4)])
def test_whisper_uses_the_cores_it_may_use(
    monkeypatch: pytest.MonkeyPatch, cores: int, threads: int
) -> None:
    """Not faster-whisper's fixed 4: on 2 cores that oversubscribes them."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(cores)), raising=False)
    assert whisper_threads() == threads


def test_packaged_model_matches_its_hash() -> None:
    verify_model(packaged_model_dir(), PACKAGED_MODEL_SHA256)


def test_model_dir_without_model_bin_is_refused(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text("{}")
    with pytest.raises(WhisperModelError, match=r"no model\.bin"):
        whisper_model_dir(tmp_path)
    with pytest.raises(WhisperModelError, match=r"no model\.bin"):
        build_stt("whisper", model_dir=tmp_path)
    assert whisper_model_dir(None) == packaged_model_dir()


async def test_corrupt_model_is_refused(tmp_path: Path) -> None:
    copy = Path(shutil.copytree(packaged_model_dir(), tmp_path / "model"))
    with (copy / "model.bin").open("r+b") as f:
        f.seek(1_000_000)
        byte = f.read(1)
        f.seek(1_000_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(WhisperModelHashError, match="SHA-256"):
        load_whisper_model(copy, sha256=PACKAGED_MODEL_SHA256)
    # in a pipeline the service reports it upstream instead of transcribing with it
    service = OfflineWhisperSTTService(model_dir=copy, sha256=PACKAGED_MODEL_SHA256)
    _, up = await run_test(service, frames_to_send=[], start_timeout=60.0)
    errors = [f.error for f in up if isinstance(f, ErrorFrame)]
    assert len(errors) == 1
    assert "SHA-256" in errors[0]


# --- the Pipecat services --------------------------------------------------------------------


async def test_tts_service_speaks_16k_chunks_in_a_pipeline() -> None:
    # the pipeline's default output rate is 24 kHz: the service keeps the rate it was built for
    down = await run_frames(build_tts("espeak", sample_rate=RATE), [TTSSpeakFrame(PHRASE)])
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert audio
    assert {f.sample_rate for f in audio} == {RATE}
    assert all(len(f.audio) <= RATE * 2 * 40 // 1000 for f in audio)
    assert 1.0 < seconds(b"".join(f.audio for f in audio)) < 5.0
    kinds = [type(f) for f in down if isinstance(f, (TTSStartedFrame, TTSStoppedFrame))]
    assert kinds == [TTSStartedFrame, TTSStoppedFrame]


async def test_stt_service_transcribes_a_vad_segment_in_a_pipeline(
    whisper: Any, speech: bytes
) -> None:
    silence = [InputAudioRawFrame(bytes(FRAME_BYTES), RATE, 1) for _ in range(10)]
    padded = speech + bytes(-len(speech) % FRAME_BYTES)
    spoken = [
        InputAudioRawFrame(padded[i : i + FRAME_BYTES], RATE, 1)
        for i in range(0, len(padded), FRAME_BYTES)
    ]
    frames: list[Frame] = [
        *silence,
        VADUserStartedSpeakingFrame(),
        *spoken,
        VADUserStoppedSpeakingFrame(),
        *silence,
    ]
    down = await run_frames(build_stt("whisper"), frames)
    texts = [f.text for f in down if isinstance(f, TranscriptionFrame)]
    assert len(texts) == 1
    assert "disk" in texts[0].lower()
    assert texts[0] == texts[0].strip()


# --- starting transcription on a pause ------------------------------------------------------


def audio_frames(pcm: bytes) -> list[Frame]:
    padded = pcm + bytes(-len(pcm) % FRAME_BYTES)
    return [
        InputAudioRawFrame(padded[i : i + FRAME_BYTES], RATE, 1)
        for i in range(0, len(padded), FRAME_BYTES)
    ]


def trimmed(pcm: bytes) -> bytes:
    """Speech without eSpeak's leading and trailing silence, so the test sets the gaps."""
    loud = np.flatnonzero(np.abs(np.frombuffer(pcm, dtype="<i2")) > 300)
    return pcm[2 * loud[0] : 2 * (loud[-1] + 1)]


def two_phrases(speech: bytes, gap_secs: float) -> list[Frame]:
    second = Espeak().synthesize(SECOND_PHRASE, RATE)
    return [
        *quiet(0.2),
        *audio_frames(trimmed(speech) + bytes(2 * int(RATE * gap_secs)) + trimmed(second)),
        *quiet(0.6),
    ]


def quiet(secs: float) -> list[Frame]:
    return audio_frames(bytes(2 * int(RATE * secs)))


def vad(pause_secs: float = 0.1) -> PauseAwareVADProcessor:
    analyzer = PauseAwareVAD(
        pause_secs=pause_secs, sample_rate=RATE, params=VADParams(stop_secs=0.3)
    )
    return PauseAwareVADProcessor(vad_analyzer=analyzer)


SPEECH_EVENTS = (VADUserStartedSpeakingFrame, UserPausedFrame, UserResumedFrame)


def events(down: Sequence[Frame]) -> list[str]:
    """The VAD's speech events in order, and how many 20 ms audio frames came between them."""
    seen: list[str] = []
    gap = 0
    for frame in down:
        if isinstance(frame, InputAudioRawFrame):
            gap += 1
        elif isinstance(frame, (*SPEECH_EVENTS, VADUserStoppedSpeakingFrame)):
            seen.append(f"{type(frame).__name__}+{gap}")
            gap = 0
    return seen


def names(seen: list[str]) -> list[str]:
    return [event.split("+")[0] for event in seen]


async def test_vad_reports_a_pause_before_the_stop(speech: bytes) -> None:
    down = await run_frames(vad(), [*quiet(0.2), *audio_frames(speech), *quiet(0.6)])
    seen = events(down)
    assert names(seen) == [
        "VADUserStartedSpeakingFrame",
        "UserPausedFrame",
        "VADUserStoppedSpeakingFrame",
    ]
    # the pause comes about 0.1 s into the quiet, the stop 0.2 s (10 frames) after it
    assert 7 <= int(seen[2].split("+")[1]) <= 12


async def test_vad_reports_speech_coming_back_after_a_pause(speech: bytes) -> None:
    assert names(events(await run_frames(vad(), two_phrases(speech, 0.18)))) == [
        "VADUserStartedSpeakingFrame",
        "UserPausedFrame",
        "UserResumedFrame",
        "UserPausedFrame",
        "VADUserStoppedSpeakingFrame",
    ]


async def test_vad_without_a_pause_time_only_starts_and_stops(speech: bytes) -> None:
    down = await run_frames(vad(0.0), [*quiet(0.2), *audio_frames(speech), *quiet(0.6)])
    assert names(events(down)) == ["VADUserStartedSpeakingFrame", "VADUserStoppedSpeakingFrame"]


async def test_stt_takes_the_transcript_started_on_the_pause(whisper: Any, speech: bytes) -> None:
    stt = build_stt("whisper")
    assert isinstance(stt, OfflineWhisperSTTService)
    frames = [*quiet(0.2), *audio_frames(speech), *quiet(0.6)]
    down = await run_frames(Pipeline([vad(), stt]), frames)
    texts = [f.text for f in down if isinstance(f, TranscriptionFrame)]
    assert len(texts) == 1
    assert "disk" in texts[0].lower()
    assert stt.early_hits == 1


async def test_stt_drops_an_early_start_when_the_user_goes_on(whisper: Any, speech: bytes) -> None:
    # a pause mid-utterance starts a transcription; speech after it makes that one stale,
    # and the transcript holds the whole utterance, not what was said before the pause
    stt = build_stt("whisper")
    assert isinstance(stt, OfflineWhisperSTTService)
    down = await run_frames(Pipeline([vad(), stt]), two_phrases(speech, 0.18))
    texts = [f.text.lower() for f in down if isinstance(f, TranscriptionFrame)]
    assert len(texts) == 1
    assert "disk" in texts[0]
    assert "memory" in texts[0]
    assert stt.early_hits == 1  # the second pause's run, which heard both phrases


async def test_stt_without_pauses_transcribes_at_the_stop(whisper: Any, speech: bytes) -> None:
    stt = build_stt("whisper")
    assert isinstance(stt, OfflineWhisperSTTService)
    frames = [*quiet(0.2), *audio_frames(speech), *quiet(0.6)]
    down = await run_frames(Pipeline([vad(0.0), stt]), frames)
    texts = [f.text for f in down if isinstance(f, TranscriptionFrame)]
    assert len(texts) == 1
    assert "disk" in texts[0].lower()
    assert stt.early_hits == 0


# --- choosing a service ----------------------------------------------------------------------


def test_unknown_service_names_are_refused() -> None:
    with pytest.raises(ValueError, match="espeak, openai"):
        build_tts("festival", sample_rate=RATE)
    with pytest.raises(ValueError, match="whisper, openai"):
        build_stt("sphinx")


def test_cloud_service_without_its_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "pipecat.services.deepgram.stt", None)
    with pytest.raises(SpeechConfigError, match=r"pipecat-ai\[deepgram\]"):
        build_stt("deepgram", api_key="unused")


def test_cloud_service_without_a_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CARTESIA_API_KEY", raising=False)
    with pytest.raises(SpeechConfigError, match="CARTESIA_API_KEY"):
        build_tts("cartesia", sample_rate=RATE)


def test_espeak_service_checks_its_voice_settings() -> None:
    with pytest.raises(ValueError, match="words a minute"):
        EspeakTTSService(rate=1000)


async def test_stt_transcribes_at_the_stop_when_its_early_start_was_cancelled(
    whisper: Any, speech: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the early run is cancelled from elsewhere (its task manager, say): the stage itself
    # must go on and transcribe the whole utterance, not inherit that cancellation
    stt = build_stt("whisper")
    assert isinstance(stt, OfflineWhisperSTTService)
    start_early = stt._start_early

    async def start_then_lose() -> None:
        await start_early()
        if stt._early is not None:
            stt._early.text.cancel()

    monkeypatch.setattr(stt, "_start_early", start_then_lose)
    frames = [*quiet(0.2), *audio_frames(speech), *quiet(0.6)]
    # bounded: with the stage cancelled, the pipeline never finishes
    down = await asyncio.wait_for(run_frames(Pipeline([vad(), stt]), frames), timeout=60)
    texts = [f.text for f in down if isinstance(f, TranscriptionFrame)]
    assert len(texts) == 1
    assert "disk" in texts[0].lower()
    assert stt.early_hits == 0
