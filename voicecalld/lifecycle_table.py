"""The call lifecycle's table: (state, input [guard]) -> (next state, steps).

One row per line, read as ``states, input [guard] -> next: steps``; the
first row whose guard holds applies. The steps and guards are named in
``lifecycle_steps``; ``lifecycle.Call`` feeds inputs in and applies the
rows; ``lifecycle_doc`` renders this table into docs/lifecycle.rst and the
CALL STATES section of voicecalld(8). ``ROWS`` indexes it, and refuses a
row that breaks ``calls.TRANSITIONS`` when the module is imported.
"""

from __future__ import annotations

from . import calls
from .calls import TERMINAL, State, can_transition
from .lifecycle_steps import (
    ANNOUNCE,
    ARM_DETECTION,
    ARM_MAX_DURATION,
    ARM_NOTIFY_HANGUP,
    ARM_RING,
    BOT_LINE,
    CALLEE_LINE,
    CANCEL_DETECTION,
    CANCEL_RING,
    CARRIERS,
    CHOOSE_END,
    CHOSEN,
    CLOSE,
    DELIVER,
    DELIVERED,
    END_CHOSEN,
    FAX,
    FORGET_END,
    FORGET_TRANSFER,
    GIVEN,
    HANG_UP,
    IDLE,
    LAST_THEN_HANG_UP,
    LEAVE_MESSAGE,
    LEAVE_VOICEMAIL,
    LISTEN,
    MACHINE_GREETING,
    MARK_DELIVERED,
    MARK_INTERRUPTED,
    MARK_OPENING_SPOKEN,
    MARK_TRANSFERRING,
    MARK_UNDELIVERED,
    MESSAGE_DUE,
    MOVE,
    NO_OPENING,
    NOT_TRANSFERRING,
    NOTE_ANSWERED_BY,
    NOTE_ERROR,
    NOTE_GREETING_ENDED,
    NOTE_TURN,
    NOTE_UNKNOWN,
    NOTHING_SAID,
    OPENING,
    OPENING_DTMF,
    OPENING_UNSAID,
    OUTBOUND,
    PERSIST,
    PUBLISH_DTMF,
    PUBLISH_PARTIAL,
    QUIET,
    SAID_LINE,
    SAME,
    SEND_DTMF,
    SPEAK,
    STAMP_ANSWERED,
    STAMP_QUEUED,
    STAMP_STARTED,
    START_RECORDING,
    STOP_LISTENING,
    TRANSFER,
    TRANSFER_LINE,
    VERDICT_DUE,
    Input,
    Row,
    hang_up,
    row,
)

# --- the table --------------------------------------------------------------------------------

S, In = State, Input
ANY: tuple[State, ...] = tuple(s for s in State if s not in TERMINAL)
UNANSWERED = (S.INITIATED, S.RINGING)
CONNECTED: tuple[State, ...] = tuple(s for s in State if s in calls.CONNECTED)
BEFORE_ACTIVE = (S.INITIATED, S.RINGING, S.ANSWERED)
NOT_SPEAKING = (S.ANSWERED, S.ACTIVE, S.LISTENING)
NOT_LISTENING = (S.ANSWERED, S.ACTIVE, S.SPEAKING)

TABLE: tuple[Row, ...] = (
    #   states         input                   guard           next         steps
    row(S.INITIATED,   In.CREATED,             OUTBOUND,       SAME,        PERSIST, ARM_RING),
    row(S.INITIATED,   In.CREATED,             None,           SAME,        PERSIST),
    # dial pacing: a queued call waits for its turn; it is logged as dialled before the carrier is asked
    row(S.QUEUED,      In.CREATED,             None,           SAME,        PERSIST),
    row(S.QUEUED,      In.DIAL,                None,           S.INITIATED, MOVE, STAMP_STARTED, PERSIST, ARM_RING),
    row(S.INITIATED,   In.DIAL_THROTTLED,      None,           S.QUEUED,    CANCEL_RING, MOVE, STAMP_QUEUED, PERSIST),
    row(S.QUEUED,      In.END,                 None,           GIVEN,       MOVE, CLOSE),
    row(S.INITIATED,   In.RINGING,             None,           S.RINGING,   MOVE, PERSIST),
    row(UNANSWERED,    In.ANSWERED,            None,           S.ANSWERED,  MOVE, STAMP_ANSWERED, CANCEL_RING,
                                                                            ARM_MAX_DURATION, PERSIST, OPENING),
    row(S.ANSWERED,    In.OPENING,             MESSAGE_DUE,    S.SPEAKING,  *LEAVE_VOICEMAIL),
    row(S.ANSWERED,    In.OPENING,             VERDICT_DUE,    SAME,        ARM_DETECTION),
    row(S.ANSWERED,    In.OPENING,             OPENING_UNSAID, S.SPEAKING,  MARK_OPENING_SPOKEN, BOT_LINE, MOVE,
                                                                            PERSIST, SPEAK),
    row(S.ANSWERED,    In.OPENING,             NO_OPENING,     S.ACTIVE,    MOVE),
    row(BEFORE_ACTIVE, In.ACTIVE,              None,           S.ACTIVE,    MOVE, PERSIST),
    row(NOT_SPEAKING,  In.SPEAKING,            None,           S.SPEAKING,  MOVE, PERSIST),
    row(CONNECTED,     In.SPEAK,               None,           S.SPEAKING,  BOT_LINE, MOVE, PERSIST, SPEAK),
    row(CONNECTED,     In.CONTINUE,            None,           S.SPEAKING,  BOT_LINE, MOVE, PERSIST, SPEAK),
    row(CONNECTED,     In.GOODBYE,             None,           S.SPEAKING,  CHOOSE_END, BOT_LINE, MOVE, PERSIST,
                                                                            SPEAK, STOP_LISTENING),
    row(CONNECTED,     In.HANG_UP_AFTER,       None,           SAME,        CHOOSE_END, LAST_THEN_HANG_UP,
                                                                            STOP_LISTENING),
    row(CONNECTED,     In.PLAYED_THEN_HANG_UP, None,           SAME,        MARK_DELIVERED, ARM_NOTIFY_HANGUP),
    row(NOT_LISTENING, In.PLAYED_THEN_LISTEN,  IDLE,           S.LISTENING, MOVE, PERSIST, LISTEN),
    row(CONNECTED,     In.PLAYED_THEN_LISTEN,  None,           SAME,        LISTEN),
    row(NOT_LISTENING, In.PLAYED,              IDLE,           S.LISTENING, MOVE, PERSIST),
    row(NOT_LISTENING, In.SPEAK_REFUSED,       IDLE,           S.LISTENING, MARK_UNDELIVERED, MOVE, PERSIST),
    row(CONNECTED,     In.SPEAK_REFUSED,       None,           SAME,        MARK_UNDELIVERED, PERSIST),
    row(S.ANSWERED,    In.PARTIAL,             VERDICT_DUE,    SAME),       # a greeting is not the callee's turn
    row(S.ANSWERED,    In.SPEECH,              VERDICT_DUE,    SAME),
    row(ANY,           In.PARTIAL,             None,           SAME,        PUBLISH_PARTIAL),
    row(S.SPEAKING,    In.SPEECH,              QUIET,          S.LISTENING, CALLEE_LINE, MOVE, PERSIST, DELIVER),
    row(ANY,           In.SPEECH,              None,           SAME,        CALLEE_LINE, PERSIST, DELIVER),
    row(ANY,           In.INTERRUPTED,         None,           SAME,        MARK_INTERRUPTED, PERSIST),
    row(CONNECTED,     In.TURN,                None,           SAME,        NOTE_TURN, PERSIST),
    row(CONNECTED,     In.SAID,                None,           SAME,        SAID_LINE, PERSIST),
    row(ANY,           In.DTMF,                None,           SAME,        PUBLISH_DTMF),
    # call control: DTMF, transfer, recording
    row(S.ANSWERED,    In.PRELUDE,             NOTHING_SAID,   SAME,        START_RECORDING, ANNOUNCE, OPENING_DTMF),
    row(CONNECTED,     In.SEND_DTMF,           None,           SAME,        SEND_DTMF),
    row(CONNECTED,     In.TRANSFER,            NOT_TRANSFERRING, SAME,      MARK_TRANSFERRING, TRANSFER_LINE, PERSIST,
                                                                            TRANSFER),
    row(CONNECTED,     In.TRANSFERRED,         None,           S.TRANSFERRED, MOVE, CLOSE),
    row(ANY,           In.TRANSFER_FAILED,     None,           SAME,        FORGET_TRANSFER),
    row(UNANSWERED,    In.RING_TIMER,          None,           SAME,        hang_up(S.NO_ANSWER)),
    row(ANY,           In.MAX_DURATION_TIMER,  None,           SAME,        hang_up(S.TIMEOUT)),
    row(ANY,           In.NOTIFY_HANGUP_TIMER, None,           SAME,        hang_up(S.COMPLETED)),
    row(ANY,           In.END,                 None,           SAME,        HANG_UP),
    row(ANY,           In.ERROR,               None,           SAME,        NOTE_ERROR, hang_up(S.ERROR)),
    row(ANY,           In.HANG_UP_REFUSED,     None,           SAME,        FORGET_END),
    row(ANY,           In.ENDED,               END_CHOSEN,     CHOSEN,      MOVE, CLOSE),
    row(ANY,           In.ENDED,               DELIVERED,      S.COMPLETED, MOVE, CLOSE),
    row(ANY,           In.ENDED,               None,           CARRIERS,    MOVE, CLOSE),
    row(ANY,           In.CLOSE,               None,           GIVEN,       MOVE, CLOSE),
    # answering-machine detection (outbound.voicemail)
    row(S.ANSWERED,    In.ANSWERED_BY,         FAX,            SAME,        NOTE_ANSWERED_BY, PERSIST,
                                                                            hang_up(S.FAILED)),
    row(S.ANSWERED,    In.ANSWERED_BY,         None,           SAME,        NOTE_ANSWERED_BY, PERSIST, CANCEL_DETECTION,
                                                                            OPENING),
    row(ANY,           In.ANSWERED_BY,         None,           SAME,        NOTE_ANSWERED_BY, PERSIST),
    row(CONNECTED,     In.GREETING_ENDED,      LEAVE_MESSAGE,  S.SPEAKING,  NOTE_GREETING_ENDED, *LEAVE_VOICEMAIL),
    row(ANY,           In.GREETING_ENDED,      None,           SAME,        NOTE_GREETING_ENDED, PERSIST),
    row(S.ANSWERED,    In.DETECTION_TIMER,     MACHINE_GREETING, S.SPEAKING, *LEAVE_VOICEMAIL),
    row(S.ANSWERED,    In.DETECTION_TIMER,     None,           SAME,        NOTE_UNKNOWN, PERSIST, OPENING),
)


def _index(table: tuple[Row, ...]) -> dict[tuple[State, Input], tuple[Row, ...]]:
    """Rows by (state, input), in table order; checks that every row keeps
    to ``TRANSITIONS`` and marks where it moves."""
    index: dict[tuple[State, Input], tuple[Row, ...]] = {}
    for rule in table:
        if (MOVE in rule.steps) == (rule.next is SAME):
            raise ValueError(f"{rule}: a row moves (MOVE) exactly when its next state is not '='")
        for state in rule.states:
            if isinstance(rule.next, State) and rule.next != state and not can_transition(state, rule.next):
                raise ValueError(f"{rule}: {state} may not move to {rule.next}")
            index[(state, rule.input)] = (*index.get((state, rule.input), ()), rule)
    return index


ROWS = _index(TABLE)
