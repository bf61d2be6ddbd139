"""A loopback fake of OpenAI's audio API, for the real `openai` client inside pipecat's
`OpenAITTSService` and `OpenAISTTService`.

`FakeOpenAIAudio` is the agent tests' `FakeModelServer` (so it answers chat completions too)
plus `POST /v1/audio/speech`, which speaks the input text with eSpeak NG as raw 24 kHz 16-bit
mono PCM (what ``response_format: pcm`` means), and `POST /v1/audio/transcriptions`, which
takes the multipart upload and answers with a transcript the test chooses. Every audio request
is recorded; `error` makes both endpoints answer with OpenAI's error body instead, and
`delay` makes them wait first.
"""

from __future__ import annotations

import io
import wave
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from it0.voice.espeak import Espeak
from tests.agent.fakes import FakeModelServer, Reply, Responder, _openai_error

__all__ = ["SPEECH_RATE", "FakeOpenAIAudio", "SpeechRequest", "TranscriptionRequest"]

SPEECH_RATE = 24_000  # the rate of OpenAI's "pcm" format


@dataclass
class SpeechRequest:
    """One ``POST /v1/audio/speech``: its headers, its JSON body and the PCM sent back."""

    headers: dict[str, str]
    body: dict[str, Any]
    audio: bytes = b""

    @property
    def text(self) -> str:
        return str(self.body.get("input", ""))


@dataclass
class TranscriptionRequest:
    """One ``POST /v1/audio/transcriptions``: its headers, its form fields (each a list, as a
    field may repeat), the uploaded file and, if it is a WAV file, what it holds."""

    headers: dict[str, str]
    fields: dict[str, list[str]]
    filename: str
    content_type: str
    upload: bytes
    sample_rate: int = 0
    channels: int = 0
    sample_width: int = 0
    pcm: bytes = b""

    def field(self, name: str) -> str | None:
        values = self.fields.get(name)
        return values[-1] if values else None

    @property
    def seconds(self) -> float:
        frame = self.channels * self.sample_width
        return len(self.pcm) / frame / self.sample_rate if frame and self.sample_rate else 0.0


def _read_wav(request: TranscriptionRequest) -> None:
    try:
        with wave.open(io.BytesIO(request.upload), "rb") as wav:
            request.sample_rate = wav.getframerate()
            request.channels = wav.getnchannels()
            request.sample_width = wav.getsampwidth()
            request.pcm = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError):
        pass  # not a WAV file: the fields stay empty


Transcriber = str | Callable[[TranscriptionRequest], str]


class FakeOpenAIAudio(FakeModelServer):
    """`FakeModelServer` with OpenAI's speech and transcription endpoints.

    `transcript` is what every transcription answers (or a function of the request); speech is
    `voice` (eSpeak NG) reading the input. Requests are kept in `speech_requests` and
    `transcription_requests`. While `error` is set, both audio endpoints answer with it (a
    `Reply` with an HTTP error status) after recording the request; `delay` (seconds) is
    waited before every audio answer.
    """

    def __init__(
        self,
        *,
        transcript: Transcriber = "",
        responder: Responder = (),
        voice: Espeak | None = None,
    ) -> None:
        super().__init__(responder)
        self._transcript = transcript
        self._voice = voice or Espeak()
        self.speech_requests: list[SpeechRequest] = []
        self.transcription_requests: list[TranscriptionRequest] = []
        self.error: Reply | None = None
        self.delay = 0.0
        self._app.router.routes.extend(
            [
                Route("/v1/audio/speech", self._speech, methods=["POST"]),
                Route("/v1/audio/transcriptions", self._transcriptions, methods=["POST"]),
            ]
        )

    async def _wait(self) -> None:
        if self.delay and self._server is not None:
            await self._server.pause(self.delay)

    async def _speech(self, request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _openai_error(Reply(status=400, error="request body is not a JSON object"))
        seen = SpeechRequest(headers=dict(request.headers), body=body)
        self.speech_requests.append(seen)
        await self._wait()
        if self.error is not None:
            return _openai_error(self.error)
        if body.get("response_format") != "pcm":
            return _openai_error(Reply(status=400, error="this fake speaks only pcm"))
        seen.audio = await self._voice.asynthesize(seen.text, SPEECH_RATE)
        return Response(seen.audio, media_type="audio/pcm")

    async def _transcriptions(self, request: Request) -> Response:
        fields: dict[str, list[str]] = {}
        upload: UploadFile | None = None
        async with request.form() as form:
            for name, value in form.multi_items():
                if isinstance(value, str):
                    fields.setdefault(name, []).append(value)
                elif name == "file":
                    upload = value
            if upload is None:
                return _openai_error(Reply(status=400, error="no file uploaded"))
            seen = TranscriptionRequest(
                headers=dict(request.headers),
                fields=fields,
                filename=upload.filename or "",
                content_type=upload.content_type or "",
                upload=await upload.read(),
            )
        _read_wav(seen)
        self.transcription_requests.append(seen)
        await self._wait()
        if self.error is not None:
            return _openai_error(self.error)
        transcript = self._transcript
        text = transcript if isinstance(transcript, str) else transcript(seen)
        if seen.field("response_format") == "text":
            return PlainTextResponse(text)
        return JSONResponse({"text": text})
