"""``it0 call``: a voice call with the agent from the terminal.

Live, the microphone speaks and the speaker plays the agent's voice (``sounddevice``, the
``audio`` extra, over PortAudio).
Headless, ``--in`` streams a WAV file as the question (``--text`` types it instead) and
``--out`` keeps everything the agent said as a WAV file. What the server heard and the
answer print as they arrive; while a dropped connection is being restored the reconnect
banner shows with a spinner.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import signal
import sys
import time
import wave
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.status import Status

from it0.cli._common import err, out
from it0.cli._remote import DEFAULT_URL, ApiKey, ServerUrl, _local_key, _message, one_line
from it0.cli.agent import SessionOpt
from it0.client.rest import ApiError, ServerUnreachable
from it0.client.voice import CallNotConnected, CallState, StateChange, VoiceCall
from it0.client.voice.state import Language

RATE = 16_000
FRAME_SECONDS = 0.02
FRAME_BYTES = 640  # 20 ms of 16 kHz, 16-bit, mono
TAIL_SECONDS = 10.0  # silence after the question, at most, until the server says what it heard
IDLE_SECONDS = 1.0  # no audio for this long after the final text: the answer is over
SILENT_ANSWER_SECONDS = 5.0  # the same when no audio came at all
# live: what the sound device records and plays, in 20 ms blocks like the protocol's frames
FORMAT: dict[str, Any] = {"samplerate": RATE, "channels": 1, "dtype": "int16"}
STREAM: dict[str, Any] = {**FORMAT, "blocksize": FRAME_BYTES // 2}
MIC_BACKLOG = 50  # a second of microphone audio waiting for the network, at most
NO_SOUND = (
    "no sound device here (install the 'sounddevice' package and PortAudio), or use --in/--out"
)

AudioIn = Annotated[
    Path | None,
    typer.Option(
        "--in",
        help="say this WAV file (16 kHz mono 16-bit; other PCM WAVs are converted)",
        dir_okay=False,
    ),
]
AudioOut = Annotated[
    Path | None,
    typer.Option("--out", help="write what the agent says to this WAV file", dir_okay=False),
]
TypedQuestion = Annotated[
    str | None, typer.Option("--text", help="type the question instead of saying it")
]
Timeout = Annotated[
    float, typer.Option("--timeout", min=1, help="seconds to wait for the answer (headless)")
]
Lang = Annotated[Language, typer.Option("--lang", help="language of the status banners")]
JsonMessages = Annotated[
    bool, typer.Option("--json", help="print the control messages as JSON lines")
]


class CallFailed(Exception):
    """Ends the command with one line on stderr and ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 2, status: int = 0) -> None:
        super().__init__(message)
        self.message, self.exit_code, self.status = message, exit_code, status


def _fail(message: str, exit_code: int = 2, status: int = 0) -> NoReturn:
    label = f"error {status}" if status else "error"
    err.print(f"[red]{label}:[/red] {escape(message)}", soft_wrap=True, highlight=False)
    raise typer.Exit(exit_code)


# --- WAV files ----------------------------------------------------------------------------------


def read_wav(path: Path) -> bytes:
    """The file's audio as 16 kHz, 16-bit, mono PCM; raises ``CallFailed`` when it cannot."""
    try:
        with wave.open(str(path), "rb") as wav:
            channels, width, rate = wav.getnchannels(), wav.getsampwidth(), wav.getframerate()
            data = wav.readframes(wav.getnframes())
    except OSError as exc:
        raise CallFailed(f"cannot read {path}: {exc.strerror or exc}") from None
    except (EOFError, wave.Error) as exc:
        why = f" ({one_line(str(exc), 80)})" if str(exc) else ""
        raise CallFailed(f"{path} is not a PCM WAV file{why}") from None
    if width not in (1, 2, 3, 4):
        raise CallFailed(f"{path}: {8 * width}-bit samples are not supported")
    data = data[: len(data) - len(data) % (width * channels)]
    if not data:
        raise CallFailed(f"{path} holds no audio")
    if (channels, width, rate) == (1, 2, RATE):
        return data
    return _convert(data, channels, width, rate)


def _convert(data: bytes, channels: int, width: int, rate: int) -> bytes:
    import numpy as np
    import soxr  # type: ignore[import-untyped]

    raw = np.frombuffer(data, dtype=np.uint8)
    if width == 1:  # WAV's 8-bit samples are unsigned
        samples = (raw.astype(np.float32) - 128) / 128
    elif width == 3:
        triples = raw.reshape(-1, 3).astype(np.int32)
        value = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
        samples = np.where(value >= 1 << 23, value - (1 << 24), value) / float(1 << 23)
    else:
        kind = "<i2" if width == 2 else "<i4"
        samples = np.frombuffer(data, dtype=kind) / float(1 << (8 * width - 1))
    mono = samples.reshape(-1, channels).mean(axis=1).astype(np.float32)
    if rate != RATE:
        mono = soxr.resample(mono, rate, RATE)
    return bytes((np.clip(mono, -1.0, 1.0) * 32767).astype("<i2").tobytes())


def write_wav(path: Path, pcm: bytes) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(RATE)
        wav.writeframes(pcm)


# --- what the terminal shows ----------------------------------------------------------------------


class CallView:
    """Prints the call: what the server heard, the answer, approvals, errors and the banners.

    With ``as_json`` the control messages go to stdout as JSON lines and the banners to stderr.
    """

    def __init__(self, language: Language, as_json: bool) -> None:
        self.language, self.as_json = language, as_json
        self.console: Console = err if as_json else out
        self.started = False  # before that, a failure is the command's own error line
        self.hanging_up = False
        self.errors = 0
        self._status: Status | None = None
        self._reconnecting = False
        self._answering = False

    def message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "error":
            self.errors += 1
        if self.as_json:
            sys.stdout.write(json.dumps(message) + "\n")
            sys.stdout.flush()
            return
        if kind == "transcript":
            self.said(str(message.get("text", "")))
        elif kind == "agent.text":
            # a sentence at a time; an answer caught up with after a drop comes whole
            for line in str(message.get("text", "")).splitlines():
                if not line.strip():
                    continue
                prefix = "       " if self._answering else "[bold green]agent:[/bold green] "
                out.print(prefix + escape(line.rstrip()), soft_wrap=True, highlight=False)
                self._answering = True
            if message.get("final"):
                self._answering = False
        elif kind == "approval.required":
            approval = str(message.get("approval_id"))
            hosts = ", ".join(str(h) for h in message.get("hosts") or [])
            out.print(
                f"[yellow]approval required:[/yellow] [bold]{escape(str(message.get('command')))}"
                f"[/bold] on {escape(hosts)} ({escape(str(message.get('risk')))}), "
                f"approval {escape(approval)} — a person approves with "
                f"`it0 approvals approve {escape(approval)}`",
                soft_wrap=True,
                highlight=False,
            )
            self._answering = False
        elif kind == "error":
            err.print(
                f"[red]error:[/red] {escape(one_line(str(message.get('message', ''))))}",
                soft_wrap=True,
                highlight=False,
            )

    def said(self, text: str) -> None:
        self._answering = False
        if not self.as_json:
            out.print(f"[bold cyan]you:[/bold cyan] {escape(text)}", soft_wrap=True)

    def note(self, text: str) -> None:
        self.console.print(f"[dim]{escape(text)}[/dim]", soft_wrap=True, highlight=False)

    def state(self, change: StateChange) -> None:
        if change.state is CallState.RECONNECTING:
            self._reconnecting = True
            self._show_banner(change.banner(self.language) or "")
        elif change.state in (CallState.CONNECTED, CallState.RESUMED):
            if self._reconnecting:
                self._reconnecting = False
                self._stop_banner()
                self.console.print("[green]reconnected — the conversation goes on[/green]")
        elif change.state is CallState.FAILED:
            self._stop_banner()
            if self.started:
                banner = change.banner(self.language)
                err.print(
                    f"[red]error:[/red] {escape(str(banner))}: {escape(one_line(change.reason))}",
                    soft_wrap=True,
                    highlight=False,
                )
        elif change.state is CallState.ENDED:
            self._stop_banner()
            if not self.hanging_up:
                self.console.print(
                    f"{escape(str(change.banner(self.language)))} by the server: "
                    f"{escape(change.reason)}",
                    highlight=False,
                )

    @property
    def reconnecting(self) -> bool:
        return self._reconnecting

    def _show_banner(self, banner: str) -> None:
        if not self.console.is_terminal:  # a log or a pipe gets one line per attempt
            self.console.print(f"[yellow]{escape(banner)}[/yellow]", highlight=False)
            return
        if self._status is None:
            self._status = Status(f"[yellow]{escape(banner)}", console=self.console)
            self._status.start()
        else:
            self._status.update(f"[yellow]{escape(banner)}")

    def _stop_banner(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


class Answer:
    """Follows one question's answer: heard, answered (final text or an error), audio idle."""

    def __init__(self, view: CallView) -> None:
        self.view = view
        self.audio = bytearray()
        self.transcripts = 0
        self.answered = asyncio.Event()
        self._quiet_since = time.monotonic()

    def on_audio(self, pcm: bytes) -> None:
        self.audio += pcm
        self._quiet_since = time.monotonic()

    def on_message(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "transcript":
            self.transcripts += 1
        elif (kind == "agent.text" and message.get("final")) or kind == "error":
            self.answered.set()
            self._quiet_since = max(self._quiet_since, time.monotonic())

    def on_state(self, change: StateChange) -> None:
        if change.state in (CallState.CONNECTED, CallState.RESUMED):
            self._quiet_since = time.monotonic()

    async def finished(self) -> None:
        """Once answered, wait until the agent's voice has stopped (never while reconnecting)."""
        await self.answered.wait()
        while True:
            idle = IDLE_SECONDS if self.audio else SILENT_ANSWER_SECONDS
            wait = self._quiet_since + idle - time.monotonic()
            if wait <= 0 and not self.view.reconnecting:
                return
            await asyncio.sleep(max(0.05, min(wait, 0.25)))


def _both(*callbacks: Callable[[Any], None]) -> Callable[[Any], None]:
    def call_all(value: Any) -> None:
        for callback in callbacks:
            callback(value)

    return call_all


# --- the call -----------------------------------------------------------------------------------


async def _connect(call: VoiceCall, view: CallView) -> None:
    try:
        await call.start()
    except ServerUnreachable as exc:
        raise CallFailed(exc.message) from None
    except ApiError as exc:
        raise CallFailed(one_line(_message(exc)), status=exc.status) from None
    view.started = True
    view.note(f"on the line: call {call.session_id}")
    if call.agent_session_id is not None:
        view.note(
            f"conversation {call.agent_session_id} "
            f"(go on with it later: it0 chat --session {call.agent_session_id})"
        )


async def _say(call: VoiceCall, pcm: bytes, answer: Answer) -> None:
    """Stream ``pcm`` at real-time pace, then silence until the server has heard it."""
    loop = asyncio.get_running_loop()
    started, sent = loop.time(), 0
    for start in range(0, len(pcm), FRAME_BYTES):
        await call.send_audio(pcm[start : start + FRAME_BYTES].ljust(FRAME_BYTES, b"\0"))
        sent += 1
        await asyncio.sleep(max(0.0, started + sent * FRAME_SECONDS - loop.time()))
    heard, silence = answer.transcripts, bytes(FRAME_BYTES)
    tail_end = loop.time() + TAIL_SECONDS
    while answer.transcripts == heard and not answer.answered.is_set():
        if loop.time() > tail_end:
            raise CallFailed("the server heard no question in the audio", exit_code=1)
        if call.state.final:
            return
        await call.send_audio(silence)
        sent += 1
        await asyncio.sleep(max(0.0, started + sent * FRAME_SECONDS - loop.time()))


async def _headless(
    call: VoiceCall, answer: Answer, view: CallView, question: bytes | str, within: float
) -> int:
    """Ask once, wait for the whole answer, hang up; the exit code."""
    await _connect(call, view)
    try:
        async with asyncio.timeout(within):
            if isinstance(question, str):
                view.said(question)
                await call.send_text(question)
            else:
                await _say(call, question, answer)
            over = asyncio.create_task(call.wait_closed())
            done = asyncio.create_task(answer.finished())
            try:
                await asyncio.wait((over, done), return_when=asyncio.FIRST_COMPLETED)
            finally:
                over.cancel()
                done.cancel()
    except TimeoutError:
        raise CallFailed(f"no answer within {within:g} s", exit_code=1) from None
    except CallNotConnected as exc:
        raise CallFailed(str(exc), exit_code=1) from None
    finally:
        if not call.state.final:
            view.hanging_up = True
            await call.hangup()
    if call.state is CallState.FAILED:
        return 1
    return 1 if view.errors else 0


def _sound_device() -> ModuleType:
    """sounddevice, with an input and an output device; else one line and exit 2."""
    try:
        sounddevice = importlib.import_module("sounddevice")
        sounddevice.query_devices(kind="input")
        sounddevice.query_devices(kind="output")
    except Exception:  # not installed, no PortAudio, or no device: all the same to the user
        _fail(NO_SOUND)
    try:
        sounddevice.check_input_settings(**FORMAT)
        sounddevice.check_output_settings(**FORMAT)
    except Exception as exc:  # PortAudioError, or ValueError for a device that cannot
        _fail(f"the sound device cannot do 16 kHz mono 16-bit audio: {one_line(str(exc))}")
    return sounddevice


class Microphone:
    """Carries the microphone's blocks from PortAudio's thread to the call, in order.

    ``callback`` runs on PortAudio's thread: it copies the block and hands it to the event
    loop with ``call_soon_threadsafe``, which queues it; ``send_to`` sends the queue on the
    loop, one block after the other. While the network is slower than the microphone, at
    most ``MIC_BACKLOG`` blocks wait and the oldest are dropped (counted in ``dropped``), as
    a phone does: speech from seconds ago is worth less than a prompt answer.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._blocks: asyncio.Queue[bytes] = asyncio.Queue()
        self._open = True
        self.dropped = 0

    def callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        if not self._open:
            return
        try:
            self._loop.call_soon_threadsafe(self._put, bytes(indata))
        except RuntimeError:  # the loop has closed: the call is over
            self._open = False

    def close(self) -> None:
        """No more blocks, from now on (on the loop's thread)."""
        self._open = False

    def _put(self, block: bytes) -> None:
        if not self._open:
            return
        if self._blocks.qsize() >= MIC_BACKLOG:
            self._blocks.get_nowait()
            self.dropped += 1
        self._blocks.put_nowait(block)

    async def send_to(self, call: VoiceCall) -> None:
        while True:
            await call.send_audio(await self._blocks.get())


def _open_streams(sounddevice: ModuleType, microphone: Microphone, call: VoiceCall) -> list[Any]:
    """The microphone's and the speaker's streams, open but not started."""

    def speaker(outdata: Any, frames: int, time_info: Any, status: Any) -> None:
        # PortAudio's thread; the jitter buffer is the one part of the call safe to use here
        outdata[:] = call.buffer.read_or_silence(len(outdata))

    streams: list[Any] = []
    try:
        streams.append(sounddevice.RawInputStream(callback=microphone.callback, **STREAM))
        streams.append(sounddevice.RawOutputStream(callback=speaker, **STREAM))
    except Exception as exc:  # PortAudioError: the device went away, or is busy
        which = "speaker" if streams else "microphone"
        _close_streams(streams)
        raise CallFailed(f"cannot open the {which}: {one_line(str(exc))}") from None
    return streams


def _close_streams(streams: list[Any]) -> None:
    # abort, not stop: nothing is left to play once the call is over, and stopping waits for
    # the next block from the microphone, which never comes when it went quiet (unplugged)
    for stream in streams:
        stream.abort(ignore_errors=True)
        stream.close(ignore_errors=True)


async def _live(call: VoiceCall, view: CallView, sounddevice: ModuleType) -> int:
    """Microphone to the call, the call's buffer to the speaker, until someone hangs up."""
    microphone = Microphone(asyncio.get_running_loop())
    streams = _open_streams(sounddevice, microphone, call)  # before the call: fail first
    sender: asyncio.Task[None] | None = None
    try:
        await _connect(call, view)
        sender = asyncio.create_task(microphone.send_to(call), name="it0.call.microphone")
        try:
            for stream in streams:
                stream.start()
        except Exception as exc:  # PortAudioError: the device went away meanwhile
            raise CallFailed(f"cannot start the sound device: {one_line(str(exc))}") from None
        view.note("speak when you like; Ctrl-C hangs up")
        await call.wait_closed()
    finally:
        microphone.close()
        _close_streams(streams)
        if sender is not None:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        if not call.state.final:
            view.hanging_up = True
            await call.hangup()
    return 1 if call.state is CallState.FAILED else 0


def call(
    audio_in: AudioIn = None,
    audio_out: AudioOut = None,
    text: TypedQuestion = None,
    session: SessionOpt = None,
    timeout: Timeout = 120.0,
    lang: Lang = "en",
    as_json: JsonMessages = False,
    url: ServerUrl = DEFAULT_URL,
    key: ApiKey = None,
) -> None:
    """Call the agent: talk and listen, or say a WAV file (--in) and keep the answer (--out)."""
    if audio_in is not None and text is not None:
        _fail("use --in or --text, not both")
    if audio_out is not None and not audio_out.parent.is_dir():
        _fail(f"{audio_out.parent} is not a directory")
    headless = audio_in is not None or text is not None
    _hang_up_on_ctrl_c()
    try:
        question: bytes | str | None = read_wav(audio_in) if audio_in is not None else text
    except CallFailed as exc:
        _fail(exc.message, exc.exit_code)
    sounddevice = None if headless else _sound_device()
    credential = key or _local_key(url)
    if not credential:
        _fail("an API key is needed: --key or IT0_API_KEY")
    # the call's own warnings (a lost connection...) show as the banners instead
    logging.getLogger("it0.client.voice").addHandler(logging.NullHandler())
    view = CallView(lang, as_json)
    answer = Answer(view)

    async def run() -> int:
        try:
            voice_call = VoiceCall(
                url,
                credential,
                agent_session_id=session,
                on_audio=answer.on_audio,
                on_message=_both(view.message, answer.on_message),
                on_state=_both(view.state, answer.on_state),
            )
        except ValueError as exc:
            raise CallFailed(str(exc)) from None
        if question is not None:
            return await _headless(voice_call, answer, view, question, timeout)
        assert sounddevice is not None
        return await _live(voice_call, view, sounddevice)

    try:
        code = asyncio.run(run())
    except CallFailed as exc:
        _keep(audio_out, answer, view)
        _fail(exc.message, exc.exit_code, exc.status)
    except KeyboardInterrupt:
        _keep(audio_out, answer, view)
        view.console.print("[dim]hung up[/dim]")
        raise typer.Exit(130 if headless else 0) from None
    _keep(audio_out, answer, view)
    raise typer.Exit(code)


def _hang_up_on_ctrl_c() -> None:
    """Ctrl-C hangs up, even when the call was started with SIGINT ignored or blocked (as a
    non-interactive shell starts its background jobs): Python then never raises
    KeyboardInterrupt, and the call would go on."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _keep(path: Path | None, answer: Answer, view: CallView) -> None:
    """Write what the agent said to ``path``, if one was given and the call got through."""
    if path is None or not view.started:
        return
    try:
        write_wav(path, bytes(answer.audio))
    except OSError as exc:
        _fail(f"cannot write {path}: {exc.strerror or exc}")
    view.note(f"{len(answer.audio) / (2 * RATE):.1f} s of the agent's voice in {path}")
