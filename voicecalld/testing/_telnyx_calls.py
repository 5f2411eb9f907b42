"""The fake Telnyx's call records: what tests inspect, and the webhook
payload each call produces.

"Remote party" is the person at the other end of the daemon's call: the
callee of an outbound call, the caller of an inbound one. Telnyx's
``hangup_source`` names the *role* (caller/callee), so it flips with the
direction; the helpers here keep that in one place.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ._telnyx_webhooks import Delivery

BEHAVIOURS = ("answer", "machine", "busy", "reject", "not_found", "no_answer")

# hangup_cause -> sip_hangup_cause, as a SIP trace of that outcome would show
SIP_CAUSES = {
    "normal_clearing": "200", "user_busy": "486", "call_rejected": "603", "not_found": "404",
    "timeout": "487", "originator_cancel": "487", "time_limit": "200", "unspecified": "unspecified",
}


@dataclass(frozen=True)
class Callee:
    """How the far end of an outbound call behaves.

    ``behaviour``: ``answer`` (a person), ``machine`` (voicemail; answers,
    and AMD, if requested, says machine), ``busy``, ``reject``,
    ``not_found``, or ``no_answer`` (rings until ``timeout_secs``).
    ``after``: seconds of ringing before it acts; None uses the fake's
    ``answer_after``.
    """

    behaviour: str = "answer"
    after: float | None = None

    def __post_init__(self) -> None:
        if self.behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown callee behaviour {self.behaviour!r}; choose from {BEHAVIOURS}")


@dataclass
class Command:
    """One command request that named a known call."""

    name: str
    params: dict[str, Any]
    status: int
    deduped: bool = False
    at: float = field(default_factory=time.monotonic)

    @property
    def accepted(self) -> bool:
        return self.status == 200 and not self.deduped


@dataclass
class SpeakJob:
    text: str
    voice: str
    started: bool = False
    ended: bool = False
    started_at: float | None = None    # monotonic, when it started playing


@dataclass
class FakeCall:
    call_control_id: str
    call_leg_id: str
    call_session_id: str
    connection_id: str
    direction: str                     # "outgoing" | "incoming" (Telnyx's words)
    from_: str
    to: str
    webhook_url: str
    client_state: str | None
    status: str                        # "ringing" | "parked" | "answered" | "ended"
    start_time: str
    timeout_secs: int = 30
    amd: str | None = None
    callee: Callee | None = None
    time_limit_secs: int | None = None
    transcribe_on_answer: str | None = None   # tracks, when dial/answer asked for transcription
    transcription_tracks: str | None = None   # None while transcription is off
    hangup_cause: str | None = None
    hangup_source: str | None = None
    end_time: str | None = None
    answered_at: float | None = None
    ended_at: float | None = None
    beeped_at: float | None = None     # monotonic: a machine's greeting ended (its beep)
    commands: list[Command] = field(default_factory=list)
    said: list[str] = field(default_factory=list)            # accepted speak payloads, in order
    heard: list[str] = field(default_factory=list)           # remote speech reported as final transcripts
    dropped_speech: list[str] = field(default_factory=list)  # remote speech nobody was transcribing
    dtmf: list[str] = field(default_factory=list)
    playbacks: list[dict[str, Any]] = field(default_factory=list)
    streams: list[dict[str, Any]] = field(default_factory=list)
    webhooks: list[Delivery] = field(default_factory=list)
    speak_jobs: list[SpeakJob] = field(default_factory=list)
    speech_busy_until: float = 0.0     # monotonic end of queued TTS
    listen_busy_until: float = 0.0     # monotonic end of queued remote speech
    dtmf_sent: list[str] = field(default_factory=list)       # send_dtmf digits, in order
    transfers: list[FakeCall] = field(default_factory=list)  # the legs B transfer commands dialed
    transfer_of: FakeCall | None = None                      # a leg B: the call it was dialed for
    bridged_with: FakeCall | None = None
    recording: dict[str, Any] | None = None                  # record_start's, while recording
    recordings: list[dict[str, Any]] = field(default_factory=list)  # call.recording.saved payloads sent

    @property
    def alive(self) -> bool:
        return self.status != "ended"

    @property
    def answered(self) -> bool:
        return self.answered_at is not None

    @property
    def transcribing(self) -> bool:
        return self.transcription_tracks is not None and self.alive

    @property
    def command_names(self) -> list[str]:
        """Names of the commands that took effect (not rejected, not deduped)."""
        return [c.name for c in self.commands if c.accepted]

    @property
    def event_types(self) -> list[str]:
        """Event types delivered, one per event id, in first-delivery order;
        forged one-offs excluded."""
        seen: set[str] = set()
        order: list[str] = []
        for delivery in list(self.webhooks):
            if not delivery.forged and delivery.event_id not in seen:
                seen.add(delivery.event_id)
                order.append(delivery.event_type)
        return order

    def remote_source(self) -> str:
        """``hangup_source`` when the remote party hangs up."""
        return "callee" if self.direction == "outgoing" else "caller"

    def local_source(self) -> str:
        """``hangup_source`` when the daemon's side hangs up."""
        return "caller" if self.direction == "outgoing" else "callee"

    def call_duration(self) -> int:
        if self.answered_at is None:
            return 0
        end = self.ended_at if self.ended_at is not None else time.monotonic()
        return int(end - self.answered_at)

    def base_payload(self) -> dict[str, Any]:
        state = {"ringing": "bridging", "parked": "parked", "answered": "answered", "ended": "hangup"}
        return {
            "call_control_id": self.call_control_id, "call_leg_id": self.call_leg_id,
            "call_session_id": self.call_session_id, "connection_id": self.connection_id,
            "client_state": self.client_state, "from": self.from_, "to": self.to,
            "direction": self.direction, "state": state[self.status], "start_time": self.start_time,
        }

    def status_record(self) -> dict[str, Any]:
        """The body of ``GET /v2/calls/{id}``."""
        record: dict[str, Any] = {
            "call_control_id": self.call_control_id, "call_leg_id": self.call_leg_id,
            "call_session_id": self.call_session_id, "client_state": self.client_state,
            "is_alive": self.alive, "call_duration": self.call_duration(), "record_type": "call",
            "start_time": self.start_time,
        }
        if self.end_time is not None:
            record["end_time"] = self.end_time
        return record
