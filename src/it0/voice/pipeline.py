"""One call's Pipecat pipeline: WebSocket in -> Silero VAD -> speech-to-text -> the turn taker
(hands finished utterances to the agent) -> text-to-speech -> WebSocket out.

The serializer maps the protocol (raw PCM + JSON control messages) onto Pipecat frames; control
messages never enter the pipeline, they go to the connection's handler.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams, VADState
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    OutputAudioRawFrame,
    OutputTransportMessageFrame,
    OutputTransportMessageUrgentFrame,
    SystemFrame,
    TranscriptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.audio.vad_processor import VADProcessor
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.serializers.base_serializer import FrameSerializer
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport
from starlette.websockets import WebSocket

from it0.voice.protocol import CHANNELS, SAMPLE_RATE, ProtocolError, check_audio, parse_control

Send = Callable[[dict[str, Any]], Awaitable[None]]


class VoiceSerializer(FrameSerializer):
    """Raw PCM and JSON control messages <-> Pipecat frames."""

    def __init__(
        self,
        *,
        on_control: Send,
        on_error: Send,
        on_traffic: Callable[[], None],
        max_frame_bytes: int,
    ) -> None:
        super().__init__()
        self._on_control, self._on_error, self._on_traffic = on_control, on_error, on_traffic
        self._max = max_frame_bytes

    async def serialize(self, frame: Frame) -> str | bytes | None:
        if isinstance(frame, OutputAudioRawFrame):
            return bytes(frame.audio)
        if isinstance(frame, InterruptionFrame):
            return json.dumps({"type": "audio.clear"})
        if isinstance(frame, (OutputTransportMessageFrame, OutputTransportMessageUrgentFrame)):
            return json.dumps(frame.message)
        return None

    async def deserialize(self, data: str | bytes) -> Frame | None:
        self._on_traffic()
        try:
            if isinstance(data, bytes):
                check_audio(data, self._max)
                return InputAudioRawFrame(
                    audio=data, sample_rate=SAMPLE_RATE, num_channels=CHANNELS
                )
            if len(data) > self._max:
                raise ProtocolError(
                    "frame_too_large", f"control messages are at most {self._max} characters"
                )
            message = parse_control(data)
        except ProtocolError as exc:
            await self._on_error(exc.to_message())
            return None
        await self._on_control(message)
        return None


class UserPausedFrame(SystemFrame):
    """The user has been quiet for the pause time while still counted as speaking: the
    utterance may be over, so speech-to-text can start on it before the VAD's stop."""


class UserResumedFrame(SystemFrame):
    """Speech came back after a ``UserPausedFrame``: what was started on the pause is stale."""


class PauseAwareVAD(SileroVADAnalyzer):
    """Silero VAD that also tells when a stop is under way: after ``pause_secs`` of quiet, long
    before the ``stop_secs`` that end the utterance."""

    def __init__(self, *, pause_secs: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._pause_secs = pause_secs
        self._quiet_secs = 0.0
        self._paused = False
        self._news: type[SystemFrame] | None = None

    async def analyze_audio(self, buffer: bytes) -> VADState:
        state = await super().analyze_audio(buffer)
        # STOPPING: speech was heard and quiet has begun, but not yet for stop_secs
        self._quiet_secs = (
            self._quiet_secs + len(buffer) / (2 * self.sample_rate)
            if state == VADState.STOPPING
            else 0.0
        )
        if not self._paused and self._pause_secs and self._quiet_secs >= self._pause_secs:
            self._paused, self._news = True, UserPausedFrame
        elif self._paused and state != VADState.STOPPING:
            # back to SPEAKING is news; QUIET means the stop came and the pause was the end
            self._paused = False
            self._news = UserResumedFrame if state == VADState.SPEAKING else None
        return state

    def take_news(self) -> type[SystemFrame] | None:
        """The pause or resume the last audio brought, once."""
        news, self._news = self._news, None
        return news


class PauseAwareVADProcessor(VADProcessor):
    """Pipecat's VAD processor, also pushing ``UserPausedFrame`` and ``UserResumedFrame``
    after the audio that caused them."""

    def __init__(self, *, vad_analyzer: PauseAwareVAD, **kwargs: Any) -> None:
        super().__init__(vad_analyzer=vad_analyzer, **kwargs)
        self._analyzer = vad_analyzer

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame) and (news := self._analyzer.take_news()):
            await self.push_frame(news())


class TurnTaker(FrameProcessor):
    """Joins what the user said into utterances and hands each finished one on.

    An utterance is finished when speech-to-text has produced its text and the user has
    stopped speaking; either may come first. User speech while the bot talks interrupts it
    (barge-in): playback stops and the client is told to clear its buffer.
    """

    def __init__(
        self,
        on_utterance: Callable[[str], Awaitable[None]],
        on_barge_in: Callable[[], None],
    ) -> None:
        super().__init__()
        self._on_utterance, self._on_barge_in = on_utterance, on_barge_in
        self._heard: list[str] = []
        self._user_speaking = False
        self._bot_speaking = False

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, (VADUserStartedSpeakingFrame, UserStartedSpeakingFrame)):
            self._user_speaking = True
            if self._bot_speaking and direction == FrameDirection.DOWNSTREAM:
                self._bot_speaking = False
                self._on_barge_in()
                await self.broadcast_interruption()  # type: ignore[no-untyped-call]
        elif isinstance(frame, (VADUserStoppedSpeakingFrame, UserStoppedSpeakingFrame)):
            self._user_speaking = False
            await self._finish()
        elif isinstance(frame, TranscriptionFrame):
            if frame.text.strip():
                self._heard.append(frame.text.strip())
            await self._finish()
            return  # what the user said is not for the speaker
        elif isinstance(frame, BotStartedSpeakingFrame):
            self._bot_speaking = True
        elif isinstance(frame, BotStoppedSpeakingFrame):
            self._bot_speaking = False
        await self.push_frame(frame, direction)

    async def _finish(self) -> None:
        if self._user_speaking or not self._heard:
            return
        text, self._heard = " ".join(self._heard), []
        await self._on_utterance(text)


def build_worker(
    websocket: WebSocket,
    serializer: VoiceSerializer,
    stages: list[FrameProcessor] | None,
    *,
    vad_stop_secs: float,
    vad_pause_secs: float = 0.0,
) -> tuple[PipelineWorker, FastAPIWebsocketTransport]:
    """The call's pipeline around ``stages`` (speech-to-text, turn taker, text-to-speech);
    without stages it echoes. With ``vad_pause_secs`` (less than the stop), the VAD also
    reports pauses, on which speech-to-text may start early."""
    transport = FastAPIWebsocketTransport(
        websocket,
        FastAPIWebsocketParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            audio_in_sample_rate=SAMPLE_RATE,
            audio_out_sample_rate=SAMPLE_RATE,
            add_wav_header=False,
            serializer=serializer,
            allowed_origins=[],
        ),
    )
    if stages is None:
        middle: list[FrameProcessor] = [Echo()]
    else:
        analyzer = PauseAwareVAD(
            pause_secs=vad_pause_secs if vad_pause_secs < vad_stop_secs else 0.0,
            sample_rate=SAMPLE_RATE,
            params=VADParams(stop_secs=vad_stop_secs),
        )
        middle = [PauseAwareVADProcessor(vad_analyzer=analyzer), *stages]
    pipeline = Pipeline([transport.input(), *middle, transport.output()])
    worker = PipelineWorker(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=SAMPLE_RATE, audio_out_sample_rate=SAMPLE_RATE),
        enable_rtvi=False,
        idle_timeout_secs=None,
        check_dangling_tasks=False,
    )
    return worker, transport


class Echo(FrameProcessor):
    """Sends the caller's audio straight back: a line test without speech services."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, InputAudioRawFrame):
            await self.push_frame(
                OutputAudioRawFrame(
                    audio=frame.audio, sample_rate=frame.sample_rate, num_channels=CHANNELS
                )
            )
        else:
            await self.push_frame(frame, direction)


# --- what is read out -------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|\n+")
_MARKUP = re.compile(r"[*_#>|]+|`+")
_LINK = re.compile(r"https?://\S+")


def speakable(text: str) -> str:
    """Text as a voice reads it: no markdown marks, links named rather than spelled."""
    text = _LINK.sub("a link", text)
    text = _MARKUP.sub(" ", text)
    return " ".join(text.split())


class Sentences:
    """Cuts a stream of text deltas into whole sentences, so speech can start early."""

    def __init__(self) -> None:
        self._buffer = ""

    def feed(self, delta: str) -> list[str]:
        self._buffer += delta
        parts = _SENTENCE_END.split(self._buffer)
        self._buffer = parts.pop()
        return [p for p in parts if p.strip()]

    def rest(self) -> list[str]:
        rest, self._buffer = self._buffer, ""
        return [rest] if rest.strip() else []
