"""The Telnyx provider's table of call legs: by our call id and by Telnyx's
``call_control_id``.

A leg lives from the dial (or the incoming ``call.initiated``) until the
manager forgets the call. After that nothing brings it back: a late reply
(the manager speaking on a call that ended meanwhile) gets ``NotConnected``
instead of a fresh leg, and a late or repeated incoming ``call.initiated``
for its ``call_control_id`` is not a new call. Both memories are bounded,
so a daemon that runs for months keeps a constant-size table.

Every method takes ``lock``, which the provider also holds to change a
leg's fields.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field

from ..calls import CallRecord, State, Transfer
from ..errors import NotConnected
from ..lru import Bounded

#: A leg's media stream (``Leg.stream``): asked for with the dial or the
#: answer, started (its ``start`` admitted), or over (stopped or failed).
STREAM_REQUESTED = "requested"
STREAM_OPEN = "open"
STREAM_ENDED = "ended"

ENDED_LEGS = 1024        # call_control_ids we hung up as rejected
FORGOTTEN = 2048         # call ids and call_control_ids of forgotten legs: never made again


@dataclass
class Leg:
    """What the provider tracks about one Telnyx call leg."""

    call_id: str | None
    ccid: str | None = None
    incoming: bool = False
    answered: bool = False
    dialing: bool = False          # the dial request has not returned yet
    hangup_pending: bool = False   # a hang-up was asked for while dialing
    transcribing: bool = False
    #: The engine wants to hear the caller (between start_ and stop_listening).
    listening: bool = False
    #: The media stream's per-call token and state (None: no stream asked for).
    stream_token: str | None = None
    stream: str | None = None
    stream_id: str | None = None   # of the stream admitted last
    end_override: State | None = None
    #: Utterance ids in the order their speak commands were sent.
    utterances: collections.deque[str] = field(default_factory=collections.deque)
    #: A transfer waiting for its message (this utterance) to be said.
    transfer: tuple[str, Transfer] | None = None


class LegTable:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._by_call: dict[str, Leg] = {}
        self._by_ccid: dict[str, Leg] = {}
        # ccids hung up as rejected: never hung up twice
        self._ended: Bounded[str, None] = Bounded(ENDED_LEGS)
        # call ids and ccids of forgotten legs: never a leg again
        self._forgotten: Bounded[str, None] = Bounded(FORGOTTEN)

    def __len__(self) -> int:
        with self.lock:
            return len(self._by_call)

    def of(self, record: CallRecord) -> Leg | None:
        with self.lock:
            leg = self._by_call.get(record.callId)
            if leg is None and record.providerCallId:
                leg = self._by_ccid.get(record.providerCallId)
            return leg

    def for_record(self, record: CallRecord) -> Leg:
        """The record's leg, made if the daemon restarted and lost it; a
        call that was forgotten raises NotConnected instead."""
        with self.lock:
            leg = self._by_call.get(record.callId)
            if leg is None and record.callId in self._forgotten:
                raise NotConnected(f"call {record.callId} has ended", {"callId": record.callId})
            if leg is None:
                leg = Leg(record.callId, record.providerCallId, incoming=str(record.direction) == "inbound")
                self._by_call[record.callId] = leg
                if record.providerCallId:
                    self._by_ccid.setdefault(record.providerCallId, leg)
            return leg

    def dialing(self, call_id: str) -> Leg:
        leg = Leg(call_id, dialing=True)
        with self.lock:
            self._by_call[call_id] = leg
        return leg

    def dial_failed(self, leg: Leg) -> None:
        with self.lock:
            if leg.call_id is not None and self._by_call.get(leg.call_id) is leg:
                del self._by_call[leg.call_id]

    def dialed(self, leg: Leg, ccid: str) -> bool:
        """The dial returned ``ccid``; True if the call was ended meanwhile
        (the leg is then left forgotten, for the caller to hang up)."""
        with self.lock:
            leg.ccid, leg.dialing = ccid, False
            if leg.call_id is not None and self._by_call.get(leg.call_id) is leg:
                self._by_ccid[ccid] = leg
            return leg.hangup_pending

    def find(self, call_id: str | None, ccid: str | None) -> Leg | None:
        """The leg of an event: by our call id first, else by call_control_id."""
        with self.lock:
            leg = self._by_call.get(call_id) if call_id else None
            if leg is None and ccid:
                leg = self._by_ccid.get(ccid)
            if leg is not None and ccid and leg.ccid is None:
                # call.initiated can beat the dial's response here.
                leg.ccid = ccid
                self._by_ccid[ccid] = leg
            return leg

    def known(self, ccid: str) -> bool:
        """Is ``ccid`` a leg we have, or one that is over for us?"""
        with self.lock:
            return ccid in self._by_ccid or ccid in self._ended or ccid in self._forgotten

    def end(self, ccid: str) -> bool:
        """Mark ``ccid`` over (a rejected call); False if it already was."""
        with self.lock:
            if ccid in self._ended:
                return False
            self._ended.put(ccid, None)
            return True

    def answering(self, call_id: str, ccid: str) -> Leg | None:
        """A leg for an accepted incoming call; None if the call was
        forgotten in the meantime."""
        with self.lock:
            if call_id in self._forgotten:
                return None
            leg = self._by_call[call_id] = self._by_ccid[ccid] = Leg(call_id, ccid, incoming=True)
            return leg

    def forget(self, record: CallRecord) -> None:
        with self.lock:
            self._forgotten.put(record.callId, None)
            leg = self._by_call.pop(record.callId, None)
            for ccid in {record.providerCallId, leg.ccid if leg else None}:
                if ccid:
                    self._forgotten.put(ccid, None)  # a late or repeated call.initiated is not a new call
                    if leg is not None and self._by_ccid.get(ccid) is leg:
                        del self._by_ccid[ccid]
