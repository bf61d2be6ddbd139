"""Cloud speech through OpenAI's audio API: the real `openai` client inside pipecat's
`OpenAITTSService` and `OpenAISTTService`, pointed at a loopback fake the way a user points
them at a server, through ``OPENAI_BASE_URL`` and ``OPENAI_API_KEY``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

import pytest

from it0.voice.espeak import Espeak
from it0.voice.speech import SpeechConfigError, build_stt, build_tts, pipecat_imports
from tests.agent.fakes import Reply
from tests.voice.conftest import Socket, StartVoice, socket
from tests.voice.fake_openai_audio import SPEECH_RATE, FakeOpenAIAudio

with pipecat_imports():
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
    from pipecat.processors.frame_processor import FrameProcessor
    from pipecat.tests.utils import run_test

RATE = 16_000
FRAME_BYTES = RATE * 2 * 20 // 1000  # 20 ms of 16-bit mono
PHRASE = "check disk usage on localhost"
HEARD = "restart nginx on web-1"  # what the fake transcribes, whatever it is sent
KEY = "sk-it0-cloud-speech-9f3c2a7e51d84b06"
ANSWER = "Disk usage on localhost is at forty two percent."
SLACK = RATE * 2 * 50 // 1000  # 50 ms of the call's audio


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeOpenAIAudio]:
    async with FakeOpenAIAudio(transcript=HEARD, responder=lambda _: Reply(text=ANSWER)) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url + "/v1")
        monkeypatch.setenv("OPENAI_API_KEY", KEY)
        yield server


async def run_frames(
    processor: FrameProcessor, frames: Sequence[Frame]
) -> tuple[list[Frame], list[Frame]]:
    """What ``processor`` sends down and up in a real pipeline fed ``frames`` and an EndFrame;
    a run that hangs fails the test."""
    async with asyncio.timeout(60):
        down, up = await run_test(processor, frames_to_send=frames)
    return list(down), list(up)


@pytest.fixture(scope="module")
def segment() -> tuple[list[Frame], bytes]:
    """VAD-framed speech as the pipeline's VAD hands it on, and the PCM the speech-to-text
    service should upload for it: the silence before it (under a second, all kept), the
    speech and half a second of trailing silence pipecat adds."""
    speech = Espeak().synthesize(PHRASE, RATE)
    padded = speech + bytes(-len(speech) % FRAME_BYTES)
    silence = [InputAudioRawFrame(bytes(FRAME_BYTES), RATE, 1) for _ in range(10)]
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
    return frames, bytes(10 * FRAME_BYTES) + padded + bytes(RATE * 2 // 2)


# --- speaking ------------------------------------------------------------------------------


async def test_openai_tts_speaks_a_sentence_through_the_api(fake: FakeOpenAIAudio) -> None:
    down, up = await run_frames(build_tts("openai", sample_rate=RATE), [TTSSpeakFrame(PHRASE)])
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    [request] = fake.speech_requests
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.body == {
        "model": "gpt-4o-mini-tts",
        "voice": "alloy",
        "input": PHRASE,
        "response_format": "pcm",
    }
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    # OpenAI's pcm is 24 kHz whatever the call's rate: the frames say so, and the output
    # transport resamples them (the whole-call test below hears 16 kHz)
    assert {(f.sample_rate, f.num_channels) for f in audio} == {(SPEECH_RATE, 1)}
    assert b"".join(f.audio for f in audio) == request.audio
    assert len(request.audio) / 2 / SPEECH_RATE > 1.0
    kinds = [type(f) for f in down if isinstance(f, (TTSStartedFrame, TTSStoppedFrame))]
    assert kinds == [TTSStartedFrame, TTSStoppedFrame]


# --- hearing -------------------------------------------------------------------------------


async def test_openai_stt_transcribes_a_vad_segment_through_the_api(
    fake: FakeOpenAIAudio, segment: tuple[list[Frame], bytes]
) -> None:
    frames, uploaded = segment
    down, up = await run_frames(build_stt("openai"), frames)
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    assert [f.text for f in down if isinstance(f, TranscriptionFrame)] == [HEARD]
    [request] = fake.transcription_requests
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.fields == {"model": ["gpt-transcribe"], "language": ["en"]}
    assert (request.filename, request.content_type) == ("audio.wav", "audio/wav")
    assert (request.sample_rate, request.channels, request.sample_width) == (RATE, 1, 2)
    assert request.pcm == uploaded


# --- failures ------------------------------------------------------------------------------


async def test_a_rejected_key_is_an_error_frame_and_never_logged(
    fake: FakeOpenAIAudio,
    segment: tuple[list[Frame], bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    # OpenAI's own wording, which shows only the ends of the key
    fake.error = Reply(status=401, error=f"Incorrect API key provided: {KEY[:3]}*****{KEY[-4:]}.")
    _, spoke = await run_frames(build_tts("openai", sample_rate=RATE), [TTSSpeakFrame(PHRASE)])
    down, heard = await run_frames(build_stt("openai"), segment[0])
    assert not [f for f in down if isinstance(f, TranscriptionFrame)]
    # a 401 is not retried
    assert len(fake.speech_requests) == len(fake.transcription_requests) == 1
    for up in (spoke, heard):
        errors = [f.error for f in up if isinstance(f, ErrorFrame)]
        assert any("401" in e and "Incorrect API key" in e for e in errors), errors
        assert not any(KEY in e for e in errors)
    assert "Incorrect API key" in caplog.text  # pipecat's log reaches ours
    assert KEY not in caplog.text


async def test_a_server_error_is_retried_then_reported(
    fake: FakeOpenAIAudio, segment: tuple[list[Frame], bytes]
) -> None:
    fake.error = Reply(status=500, retry_after=0.01)
    _, spoke = await run_frames(build_tts("openai", sample_rate=RATE), [TTSSpeakFrame(PHRASE)])
    down, heard = await run_frames(build_stt("openai"), segment[0])
    assert not [f for f in down if isinstance(f, TranscriptionFrame)]
    # the client's two retries, then the error
    assert len(fake.speech_requests) == len(fake.transcription_requests) == 3
    for up in (spoke, heard):
        errors = [f.error for f in up if isinstance(f, ErrorFrame)]
        assert any("500" in e for e in errors), errors


# --- configuration -------------------------------------------------------------------------


def test_openai_speech_without_a_key_or_server_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(SpeechConfigError, match="OPENAI_API_KEY"):
        build_tts("openai", sample_rate=RATE)
    with pytest.raises(SpeechConfigError, match="OPENAI_API_KEY"):
        build_stt("openai")


async def test_a_stalled_server_times_out_instead_of_hanging(
    fake: FakeOpenAIAudio, segment: tuple[list[Frame], bytes]
) -> None:
    fake.delay = 60.0
    tts = build_tts("openai", sample_rate=RATE, timeout=0.3)
    _, spoke = await run_frames(tts, [TTSSpeakFrame(PHRASE)])
    down, heard = await run_frames(build_stt("openai", timeout=0.3), segment[0])
    assert not [f for f in down if isinstance(f, TranscriptionFrame)]
    assert len(fake.speech_requests) == len(fake.transcription_requests) == 3
    for up in (spoke, heard):
        errors = [f.error for f in up if isinstance(f, ErrorFrame)]
        assert any("timed out" in e for e in errors), errors


async def test_explicit_options_beat_the_environment(
    fake: FakeOpenAIAudio, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")  # nothing listens there
    monkeypatch.setenv("OPENAI_API_KEY", "sk-not-this-one")
    tts = build_tts("openai", sample_rate=RATE, api_key=KEY, base_url=fake.url + "/v1")
    down, up = await run_frames(tts, [TTSSpeakFrame(PHRASE)])
    assert not [f for f in up if isinstance(f, ErrorFrame)]
    assert [r.headers["authorization"] for r in fake.speech_requests] == [f"Bearer {KEY}"]
    assert any(isinstance(f, TTSAudioRawFrame) for f in down)


async def test_an_openai_compatible_server_needs_only_its_url(
    fake: FakeOpenAIAudio, segment: tuple[list[Frame], bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    down, _ = await run_frames(build_stt("openai"), segment[0])
    assert [f.text for f in down if isinstance(f, TranscriptionFrame)] == [HEARD]
    assert fake.transcription_requests[0].headers["authorization"] == "Bearer local"


# --- a whole call --------------------------------------------------------------------------


async def test_a_call_hears_and_speaks_through_openai(
    fake: FakeOpenAIAudio, start_voice: StartVoice
) -> None:
    """One fake plays all of OpenAI: the caller's speech goes to its transcription endpoint,
    the transcript to the agent's model (its chat endpoint), the answer to its speech endpoint,
    and the 24 kHz audio that comes back reaches the caller resampled to the call's 16 kHz."""
    voice = await start_voice(voice_stt="openai", voice_tts="openai", agent_model="openai:gpt-test")
    created = await voice.create()
    question = await Espeak().asynthesize(PHRASE, RATE)
    async with socket(created["websocket_url"]) as ws:
        sender = asyncio.create_task(stream(ws, question))
        try:
            transcript = await ws.next("transcript", limit=60)
            answer = []
            while not (message := await ws.next("agent.text"))["final"]:
                answer.append(message["text"])
        finally:
            await sender
        assert transcript["text"] == HEARD
        assert " ".join(answer) == ANSWER
        # the answer's audio plays out in real time: wait for all of it, then a little more
        async with asyncio.timeout(30):
            while not (
                (first := fake.speech_requests[:1])
                and first[0].audio
                and len(ws.audio) >= len(first[0].audio) * 2 // 3 - SLACK
            ):
                with contextlib.suppress(TimeoutError):
                    await ws.next("none", limit=0.1)
        with contextlib.suppress(TimeoutError):
            await ws.next("none", limit=0.5)
    [spoken] = fake.speech_requests
    assert fake.requests[-1].last_user_text == HEARD
    assert spoken.text == ANSWER
    # 24 kHz in, 16 kHz out: two thirds of the bytes (give or take the last 20 ms frame)
    assert abs(len(ws.audio) - len(spoken.audio) * 2 // 3) <= SLACK
    heard = fake.transcription_requests[0]
    assert (heard.sample_rate, heard.channels) == (RATE, 1)
    assert heard.seconds > len(question) / 2 / RATE  # the question, and VAD's margins


async def stream(ws: Socket, pcm: bytes, silence: float = 0.8) -> None:
    """Send speech in 20 ms frames at real-time pace, then a tail of silence."""
    pcm = pcm + bytes(int(RATE * 2 * silence) // FRAME_BYTES * FRAME_BYTES)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, offset in enumerate(range(0, len(pcm), FRAME_BYTES)):
        await ws.send(pcm[offset : offset + FRAME_BYTES])
        await asyncio.sleep(max(0.0, start + (i + 1) * 0.02 - loop.time()))
