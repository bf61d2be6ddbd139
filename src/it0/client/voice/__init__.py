"""Voice calls with the agent, from any asyncio program.

    async with VoiceCall("https://it0.example", api_key, on_message=show) as call:
        await call.send_audio(pcm_from_microphone)
        pcm_for_speaker = call.buffer.read_or_silence(640)

``VoiceCall`` keeps the call alive across dropped connections, ``JitterBuffer`` smooths the
agent's audio for playback, and ``StateChange`` (a ``CallState`` plus the reconnect attempt)
is what a UI renders, banner included.
"""

from it0.client.voice.call import (
    CallCounters,
    CallNotConnected,
    Message,
    VoiceCall,
    VoiceCallError,
    VoiceSettings,
)
from it0.client.voice.jitter import JitterBuffer, JitterStats
from it0.client.voice.state import CallState, StateChange

__all__ = [
    "CallCounters",
    "CallNotConnected",
    "CallState",
    "JitterBuffer",
    "JitterStats",
    "Message",
    "StateChange",
    "VoiceCall",
    "VoiceCallError",
    "VoiceSettings",
]
