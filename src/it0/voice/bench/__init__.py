"""``it0 bench voice``: how soon the agent answers a spoken question, and how many calls a
server carries.

* latency (``latency``): one call through the SDK to a server in this process, on the offline
  stack; the figure is the median time from the end of a question to the answer's first audio.
* concurrency (``concurrency``): ``it0 serve`` in a subprocess echoing its calls' audio, and
  ever more calls from this process until 1% of their frames come back late.

Everything listens on 127.0.0.1 and is stopped afterwards (the server by its PID). Figures are
printed, never asserted.
"""

from it0.voice.bench.command import voice
from it0.voice.bench.common import serve_in_process
from it0.voice.bench.concurrency import (
    EchoProbe,
    EchoServer,
    Level,
    echo_server,
    measure_concurrency,
    ramp,
    run_level,
)
from it0.voice.bench.latency import Listener, Microphone, Turn, measure_latency, speech

__all__ = [
    "EchoProbe",
    "EchoServer",
    "Level",
    "Listener",
    "Microphone",
    "Turn",
    "echo_server",
    "measure_concurrency",
    "measure_latency",
    "ramp",
    "run_level",
    "serve_in_process",
    "speech",
    "voice",
]
